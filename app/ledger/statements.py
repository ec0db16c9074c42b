"""The ledger's SQL: the message ledger and the per-device lease, one statement per step.

| statement     | what it does                                      | guarantee                                                        |
|---------------|---------------------------------------------------|------------------------------------------------------------------|
| CLAIM         | store a message, note activity, take a free lease | ids of one device are drawn under its row lock, so id order is   |
|               |                                                   | commit order; a known idempotency key stores nothing; under a    |
|               |                                                   | live `human` lock (read on the locked row) the message is stored |
|               |                                                   | `held` and no lease is taken: no agent runs on it; past the      |
|               |                                                   | device's rate limit (counted on the locked row, so exact across  |
|               |                                                   | instances) nothing is stored or changed and `limited` is true    |
| POLL          | a waiter's look: my reply, else a freed lease     | a lease left free with messages pending is taken by one waiter  |
| NEXT          | the holder's next turn, read afresh               | frees the lease only when none is pending and no claim raced it; |
|               |                                                   | under a live `human` lock it marks the pending messages `held`   |
| RENEW         | slide a live lease                                | fenced by the epoch; a lost lease is never extended              |
| RELEASE       | give a live lease back (an interrupted turn)      | fenced by the epoch; the turn's messages stay pending, their     |
|               |                                                   | attempt counted, for the next holder                             |
| FINISH        | reply, lock change, context patch, audit, next    | fenced by the epoch: a worker that lost its lease writes nothing;|
|               |                                                   | a turn that ends under a live `human` lock (a takeover while the |
|               |                                                   | agent thought) stores no reply and no effect, and marks the      |
|               |                                                   | turn's and the pending messages `held`; it writes only while the |
|               |                                                   | turn's last message is pending, so a retry of a finish that was  |
|               |                                                   | applied (its answer lost on a disconnect) writes nothing         |
|               |                                                   | and deletes the device's streamed draft (app/streams) with it;   |
|               |                                                   | asked to (another request's message answered), NOTIFY            |
|               |                                                   | DONE_CHANNEL [tenant, device] at commit                          |

CLAIM and FINISH move the state's last_message_at (the inbox's order, app/admin/inbox.py)
to the time of the message they store, in the statement that stores it; never back.

Every statement that changes a device's row adds 1 to its version. A claim or
finish compares the version its snapshot saw with the row it locked: when they
match, what the snapshot says about the device's messages is exact, and the next
turn (with its history) comes back in the same round trip; when a concurrent
claim slipped in between, the holder reads the next turn afresh (NEXT).
"""

from __future__ import annotations

from app.sql import fresh_context, human_lock, lease_free, live_agent, live_until, message_stored, turn_history

# What FINISH notifies when a turn answered another request's message (a JSON array [tenant, device]);
# app/streams/signals.py listens and wakes that device's waiters in its process.
DONE_CHANNEL = "agent_sessions_done"

# A device's pending inbound messages (add ORDER BY id and a limit).
PENDING = """
    SELECT id, content, metadata, attempts, session_id FROM conversation_messages
    WHERE tenant_id = %(tenant)s AND device_id = %(device)s AND status = 'pending'
"""


def next_batch(excluding: str = "") -> str:
    """The next turn's messages: up to %(batch)s pending ones, oldest first.

    A message whose turns were started %(max_attempts)s times already goes alone,
    so that failing it never fails fresh messages merged with it.
    """
    return f"""{PENDING} {excluding} ORDER BY id
        LIMIT CASE WHEN (SELECT attempts FROM conversation_messages
                         WHERE tenant_id = %(tenant)s AND device_id = %(device)s AND status = 'pending' {excluding}
                         ORDER BY id LIMIT 1) >= %(max_attempts)s THEN 1 ELSE %(batch)s END"""


def _batch_json(alias: str) -> str:
    return (
        f"(SELECT jsonb_agg(jsonb_build_object('id', {alias}.id, 'content', {alias}.content, "
        f"'metadata', {alias}.metadata, 'attempts', {alias}.attempts, 'session_id', {alias}.session_id) "
        f"ORDER BY {alias}.id) FROM {alias})"
    )


# The reply to an inbound message (the burst's, when it was merged) and the device's lock.
MINE = f"""
    SELECT m.id, m.status, m.request_hash, r.content AS reply, r.agent AS reply_agent, r.metadata AS reply_metadata,
           {live_agent("st")} AS lock_agent, {live_until("st")} AS lock_expires_at
    FROM conversation_messages m
    LEFT JOIN conversation_messages r ON r.tenant_id = m.tenant_id AND r.device_id = m.device_id
        AND r.reply_to = COALESCE(m.merged_into, m.id) AND r.role = 'assistant'
    LEFT JOIN conversation_states st ON st.tenant_id = m.tenant_id AND st.device_id = m.device_id
"""

ROTATE = "(s.session_id IS NULL OR s.last_activity_at <= now() - make_interval(secs => s.session_ttl))"
FREE = lease_free("s")
HUMAN = human_lock("s")
# A claim takes a free lease unless a person holds the conversation.
TAKE = f"({FREE} AND NOT {HUMAN})"

# RATE_LIMIT_PER_DEVICE, a fixed one-minute window per device kept on its state row:
# rate_window_start opens with the first new message after the last window ended, and
# rate_count counts the new messages stored in it. The claim reads and writes both in
# its ON CONFLICT DO UPDATE, which runs on the row it has locked, in its latest committed
# version: concurrent claims of one device (on any instance) count one after the other,
# so no more than %(rate_limit)s new messages are stored in a window, exactly. Known
# external ids (idempotent retries, channel redeliveries) are never counted nor refused.
# A window is fixed, not sliding: up to twice the limit can fall in the minute that
# straddles two windows. %(rate_limit)s = 0 counts but never refuses.
RATE_WINDOW = "interval '60 seconds'"
WINDOW_OVER = f"(s.rate_window_start IS NULL OR s.rate_window_start <= now() - {RATE_WINDOW})"
KNOWN = "EXISTS (SELECT 1 FROM known)"
WITHIN_LIMIT = f"(%(rate_limit)s = 0 OR {KNOWN} OR {WINDOW_OVER} OR s.rate_count < %(rate_limit)s)"
# Whole seconds until the refused claim's window ends, from the snapshot's row (1-60):
# advisory only; when the snapshot predates the window (a concurrent claim opened it),
# the full minute.
RETRY_AFTER = f"""LEAST(60, GREATEST(1, COALESCE(
    CASE WHEN snap.rate_window_start > now() - {RATE_WINDOW}
         THEN ceil(extract(epoch FROM snap.rate_window_start + {RATE_WINDOW} - now())) END, 60)))::integer"""

# Lock the device's row first (taking the lease if free, rotating a quiet session),
# then draw the message's id: ids of one device are drawn in the order their claims
# commit, so a later id can never be answered before an earlier one. A known
# external id (an idempotency key, a channel's message id) stores nothing; it only
# takes a freed lease when older messages wait. Under a live `human` lock, read on
# the row this statement locked (so a takeover that committed first is seen), the
# message is stored `held` and the lease is left alone. Past the device's rate limit
# the ON CONFLICT's WHERE leaves the row as it was: no lease, no message (the rows below
# read `lease` and find none), and the answer says `limited` with `retry_after`.
CLAIM = f"""
WITH known AS (
    SELECT id, request_hash FROM conversation_messages
    WHERE tenant_id = %(tenant)s AND device_id = %(device)s AND external_id = %(external_id)s::text
), snap AS (
    SELECT version, rate_window_start FROM conversation_states WHERE tenant_id = %(tenant)s AND device_id = %(device)s
), older AS ({PENDING} ORDER BY id LIMIT 1),
lease AS (
    INSERT INTO conversation_states AS s
        (tenant_id, device_id, session_ttl, lease_epoch, lease_expires_at, lease_token,
         session_id, session_started_at, last_activity_at, rate_window_start, rate_count)
    SELECT %(tenant)s, %(device)s, %(default_ttl)s, nextval('conversation_lease_epoch'),
           now() + make_interval(secs => %(lease)s), %(token)s, %(new_session)s, now(), now(),
           now(), CASE WHEN {KNOWN} THEN 0 ELSE 1 END
    WHERE NOT EXISTS (SELECT 1 FROM known)
       OR (EXISTS (SELECT 1 FROM older)
           AND NOT EXISTS (SELECT 1 FROM known WHERE request_hash IS DISTINCT FROM %(hash)s))
    ON CONFLICT (tenant_id, device_id) DO UPDATE SET
        lease_epoch = CASE WHEN {TAKE} THEN EXCLUDED.lease_epoch ELSE s.lease_epoch END,
        lease_expires_at = CASE WHEN {TAKE} THEN EXCLUDED.lease_expires_at ELSE s.lease_expires_at END,
        lease_token = CASE WHEN {TAKE} THEN EXCLUDED.lease_token ELSE s.lease_token END,
        session_id = CASE WHEN {ROTATE} THEN EXCLUDED.session_id ELSE s.session_id END,
        session_started_at = CASE WHEN {ROTATE} THEN now() ELSE s.session_started_at END,
        context = CASE WHEN {ROTATE} THEN {fresh_context("s")} ELSE s.context END,
        last_activity_at = CASE WHEN NOT EXISTS (SELECT 1 FROM known) THEN now() ELSE s.last_activity_at END,
        last_message_at = CASE WHEN NOT EXISTS (SELECT 1 FROM known) THEN {message_stored("s")}
                               ELSE s.last_message_at END,
        rate_window_start = CASE WHEN NOT {KNOWN} AND {WINDOW_OVER} THEN now() ELSE s.rate_window_start END,
        rate_count = CASE WHEN {KNOWN} THEN s.rate_count WHEN {WINDOW_OVER} THEN 1 ELSE s.rate_count + 1 END,
        version = s.version + 1,
        updated_at = now()
    WHERE {WITHIN_LIMIT}
    RETURNING true AS present, s.lease_token = %(token)s AS won, s.lease_epoch, {live_agent("s")} AS lock_agent,
              s.context, s.session_id, s.version = COALESCE((SELECT version + 1 FROM snap), 0) AS exact,
              {HUMAN} AS held, {live_until("s")} AS lock_expires_at
), turn AS (
    SELECT lease.won AND lease.exact AND NOT EXISTS (SELECT 1 FROM older) AS first FROM lease
), new AS (
    INSERT INTO conversation_messages
        (tenant_id, device_id, role, content, external_id, status, metadata, session_id, request_hash, sent_at,
         attempts)
    SELECT %(tenant)s, %(device)s, 'user', %(content)s, %(external_id)s::text,
           CASE WHEN lease.held THEN 'held' ELSE 'pending' END, %(metadata)s::jsonb,
           lease.session_id, %(hash)s, %(sent_at)s::timestamptz, CASE WHEN turn.first THEN 1 ELSE 0 END
    FROM lease CROSS JOIN turn
    WHERE NOT EXISTS (SELECT 1 FROM known)
    ON CONFLICT (tenant_id, device_id, external_id) DO NOTHING
    RETURNING id, session_id
),
dup AS ({MINE} WHERE m.tenant_id = %(tenant)s AND m.device_id = %(device)s AND m.id = (SELECT id FROM known))
SELECT new.id AS new_id, lease.held AND new.id IS NOT NULL AS held, lease.lock_expires_at,
       CASE WHEN lease.won THEN lease.lease_epoch END AS lease_epoch, lease.lock_agent, lease.context,
       turn.first AND new.id IS NOT NULL AS first, new.session_id AS first_session,
       CASE WHEN turn.first AND new.id IS NOT NULL
            THEN {turn_history("new.id", "new.session_id")} END AS history,
       dup.id AS dup_id, dup.status AS dup_status, dup.request_hash AS dup_hash, dup.reply AS dup_reply,
       dup.reply_agent AS dup_agent, dup.reply_metadata AS dup_metadata,
       dup.lock_agent AS dup_lock_agent, dup.lock_expires_at AS dup_lock_expires_at,
       lease.present IS NULL AND NOT {KNOWN} AS limited,
       CASE WHEN lease.present IS NULL AND NOT {KNOWN} THEN {RETRY_AFTER} END AS retry_after
FROM (SELECT 1) one
LEFT JOIN lease ON true LEFT JOIN turn ON true LEFT JOIN new ON true LEFT JOIN dup ON true
LEFT JOIN snap ON true
"""

# A waiter's poll: is my message answered yet, else take the lease if it came free.
POLL = f"""
WITH older AS ({PENDING} ORDER BY id LIMIT 1),
lease AS (
    UPDATE conversation_states s SET
        lease_epoch = nextval('conversation_lease_epoch'),
        lease_expires_at = now() + make_interval(secs => %(lease)s),
        lease_token = NULL,
        version = s.version + 1,
        updated_at = now()
    WHERE s.tenant_id = %(tenant)s AND s.device_id = %(device)s AND {FREE} AND EXISTS (SELECT 1 FROM older)
    RETURNING s.lease_epoch, {live_agent("s")} AS lock_agent, s.context
),
mine AS ({MINE} WHERE m.tenant_id = %(tenant)s AND m.device_id = %(device)s AND m.id = %(message_id)s)
SELECT mine.status, mine.reply AS mine_reply, mine.reply_agent AS mine_agent, mine.reply_metadata AS mine_metadata,
       mine.lock_agent AS mine_lock_agent, mine.lock_expires_at AS mine_lock_expires_at,
       lease.lease_epoch, lease.lock_agent AS lease_lock_agent, lease.context
FROM (SELECT 1) one LEFT JOIN mine ON true LEFT JOIN lease ON true
"""

# The holder's next turn read afresh: the pending batch (its attempt counted) and
# its history. With none pending the lease is freed, unless a claim changed the
# row after this statement's snapshot (then the holder asks again). Under a live
# `human` lock no turn starts: the pending messages are marked held instead.
NEXT = f"""
WITH st AS (
    SELECT s.version, s.lease_epoch = %(epoch)s AND s.lease_expires_at > now() AS held, {HUMAN} AS human
    FROM conversation_states s WHERE s.tenant_id = %(tenant)s AND s.device_id = %(device)s
), parked AS (
    UPDATE conversation_messages m SET status = 'held'
    WHERE m.tenant_id = %(tenant)s AND m.device_id = %(device)s AND m.status = 'pending'
      AND (SELECT held AND human FROM st)
    RETURNING m.id
), batch AS ({next_batch("AND (SELECT held AND NOT human FROM st)")}),
started AS (
    UPDATE conversation_messages m SET attempts = m.attempts + 1
    FROM batch WHERE m.id = batch.id
    RETURNING m.id, m.content, m.metadata, m.attempts, m.session_id
), freed AS (
    UPDATE conversation_states s SET lease_expires_at = NULL, version = s.version + 1
    WHERE s.tenant_id = %(tenant)s AND s.device_id = %(device)s AND s.lease_epoch = %(epoch)s
      AND NOT EXISTS (SELECT 1 FROM batch) AND s.version = (SELECT version FROM st)
    RETURNING 1
)
SELECT {_batch_json("started")} AS batch, COALESCE((SELECT held FROM st), false) AS held,
       EXISTS (SELECT 1 FROM freed) AS freed,
       {turn_history("(SELECT min(id) FROM batch)", "(SELECT session_id FROM batch ORDER BY id LIMIT 1)")} AS history
"""

RENEW = """
UPDATE conversation_states SET lease_expires_at = now() + make_interval(secs => %(lease)s),
    version = version + 1
WHERE tenant_id = %(tenant)s AND device_id = %(device)s AND lease_epoch = %(epoch)s AND lease_expires_at > now()
RETURNING lease_expires_at
"""

RELEASE = """
UPDATE conversation_states SET lease_expires_at = NULL, version = version + 1
WHERE tenant_id = %(tenant)s AND device_id = %(device)s AND lease_epoch = %(epoch)s AND lease_expires_at > now()
RETURNING 1
"""

# Store the reply, apply the lock change (compare-and-set against the lock the
# agents saw) and the context patch (merged in SQL, so concurrent patches keep each
# other's keys), mark the turn's messages done, and start the next turn if one is
# pending. The lease is kept while messages wait or a claim raced this statement.
# A turn that ends under a live `human` lock (taken over while the agent thought)
# writes no reply, lock change, context patch or audit: its messages and the
# pending ones are marked held, and the lease is freed unless a claim raced.
LIVE = f"({live_agent('s')})"
OK = f"({LIVE} IS NOT DISTINCT FROM %(agent_before)s::text)"

FINISH = f"""
WITH snap AS (
    SELECT version FROM conversation_states WHERE tenant_id = %(tenant)s AND device_id = %(device)s
), nxt AS ({next_batch("AND id <> ALL(%(ids)s)")}),
st AS (
    UPDATE conversation_states s SET
        active_agent = CASE WHEN {OK} THEN %(agent_after)s::text ELSE s.active_agent END,
        locked_at = CASE WHEN NOT {OK} THEN s.locked_at
                         WHEN %(agent_after)s::text IS NULL THEN NULL
                         WHEN %(agent_after)s::text = {LIVE} THEN s.locked_at
                         ELSE now() END,
        session_ttl = CASE WHEN {OK} THEN COALESCE(%(ttl)s::integer, s.session_ttl) ELSE s.session_ttl END,
        expires_at = CASE WHEN NOT {OK} THEN s.expires_at
                          WHEN %(agent_after)s::text IS NULL THEN NULL
                          ELSE now() + make_interval(secs => COALESCE(%(ttl)s::integer, s.session_ttl)) END,
        context = CASE WHEN {HUMAN} THEN s.context ELSE cs_merge_context(s.context, %(patch)s::jsonb, %(cap)s) END,
        -- the reply below is stored unless a person holds the conversation (the inbox's order, app/admin/inbox.py)
        last_message_at = CASE WHEN {HUMAN} THEN s.last_message_at ELSE {message_stored("s")} END,
        lease_expires_at = CASE WHEN (EXISTS (SELECT 1 FROM nxt) AND NOT {HUMAN})
                                     OR s.version <> (SELECT version FROM snap)
                                THEN now() + make_interval(secs => %(lease)s) END,
        version = s.version + 1,
        updated_at = now()
    WHERE s.tenant_id = %(tenant)s AND s.device_id = %(device)s
      AND s.lease_epoch = %(epoch)s AND s.lease_expires_at > now()
      AND EXISTS (SELECT 1 FROM conversation_messages p WHERE p.id = %(last_id)s AND p.status = 'pending')
    RETURNING s.active_agent, s.expires_at, s.context, s.session_id, s.lease_expires_at IS NOT NULL AS kept,
              {HUMAN} AS held
), inbound AS (
    UPDATE conversation_messages m SET status = CASE WHEN st.held THEN 'held' ELSE %(status)s END,
        agent = CASE WHEN st.held THEN NULL ELSE %(agent)s END,
        session_id = COALESCE(m.session_id, st.session_id),
        processing_time_ms = %(elapsed_ms)s, has_error = %(has_error)s AND NOT st.held,
        error_message = CASE WHEN st.held THEN NULL ELSE %(error)s::text END,
        merged_into = CASE WHEN m.id <> %(last_id)s AND NOT st.held THEN %(last_id)s END
    FROM st WHERE m.id = ANY(%(ids)s) AND m.tenant_id = %(tenant)s AND m.device_id = %(device)s
    RETURNING m.id, m.session_id
), outbound AS (
    -- The reply joins the session of the message it answers, even if a new one started meanwhile.
    INSERT INTO conversation_messages
        (tenant_id, device_id, role, content, agent, reply_to, tools_used, processing_time_ms, metadata, session_id)
    SELECT %(tenant)s, %(device)s, 'assistant', %(reply)s, %(agent)s, %(last_id)s,
           %(tools)s::jsonb, %(elapsed_ms)s, %(metadata)s::jsonb, inbound.session_id
    FROM inbound, st WHERE inbound.id = %(last_id)s AND NOT st.held
    RETURNING id, created_at, session_id
), started AS (
    UPDATE conversation_messages m SET attempts = m.attempts + 1
    FROM nxt, st WHERE m.id = nxt.id AND NOT st.held
    RETURNING m.id, m.content, m.metadata, m.attempts, m.session_id
), parked AS (
    UPDATE conversation_messages m SET status = 'held'
    FROM st WHERE st.held AND m.tenant_id = %(tenant)s AND m.device_id = %(device)s AND m.status = 'pending'
      AND m.id <> ALL(%(ids)s)
    RETURNING m.id
), audit AS (
    INSERT INTO conversation_audit
        (tenant_id, device_id, session_id, event, from_agent, to_agent, message_id, db_ms, agent_ms, total_ms)
    SELECT %(tenant)s, %(device)s, st.session_id, %(event)s::text, %(agent_before)s::text, %(agent_after)s::text,
           %(last_id)s, %(db_ms)s, %(elapsed_ms)s, %(total_ms)s
    FROM st WHERE %(event)s::text IS NOT NULL AND NOT st.held
), drafted AS (
    -- The turn's streamed draft (app/streams) ends with it: the reply is stored above.
    DELETE FROM conversation_drafts d USING st WHERE d.tenant_id = %(tenant)s AND d.device_id = %(device)s
)
SELECT st.active_agent, st.expires_at, st.context, st.kept, st.held, outbound.session_id, outbound.id AS reply_id,
       outbound.created_at AS reply_created_at, {_batch_json("started")} AS next_batch,
       {turn_history("(SELECT min(id) FROM nxt)", "(SELECT session_id FROM nxt ORDER BY id LIMIT 1)")} AS history,
       -- delivered at commit to every listener (app/streams/signals.py): another request's message
       -- was answered (or held), and its waiter may be on another instance
       CASE WHEN %(notify)s THEN pg_notify('{DONE_CHANNEL}', json_build_array(%(tenant)s::text, %(device)s::text)::text)
       END AS notified
FROM st LEFT JOIN outbound ON true
"""

STALE_DEVICES = f"""
SELECT DISTINCT m.tenant_id, m.device_id FROM conversation_messages m
JOIN conversation_states s USING (tenant_id, device_id)
WHERE m.status = 'pending' AND {FREE}
LIMIT %(limit)s
"""
