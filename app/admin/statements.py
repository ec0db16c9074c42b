"""SQL of the session admin API, one statement per operation, always filtered by the caller's tenant.

| statement      | what it does                                    | guarantee                                              |
|----------------|-------------------------------------------------|--------------------------------------------------------|
| LIST_SESSIONS  | a tenant's conversations, newest activity first | one tenant's rows only; status judged by now()         |
| GET_STATE      | one device's state and live lock                | an expired lock reads as none                          |
| HISTORY        | the device's sessions                           | a device unknown to the tenant is the same as missing  |
| MESSAGES       | a page of the device's messages                 | as HISTORY                                             |
| AUDIT          | a page of the device's audit rows               | as HISTORY                                             |
| PATCH_CONTEXT  | merge a context patch                           | only on a known device; concurrent patches keep keys   |
| OVERRIDE_SET   | give the lock to an agent, audited              | lock and audit row in one statement                    |
| OVERRIDE_CLEAR | release the lock, audited                       | as OVERRIDE_SET                                        |
| ERASE          | everything stored for the device                | one statement: nothing half-erased; keyed hashes of    |
|                |                                                 | its channel message ids stay for the replay window     |
| STATS          | the monitoring figures                          | one snapshot                                           |
"""

from __future__ import annotations

from app.agents import HUMAN
from app.erasure import keep_erased
from app.sql import delivery_state, known_device, live

KEY = "s.tenant_id = %(tenant)s AND s.device_id = %(device)s"
LIVE = live("s")
STATUS = f"""CASE WHEN {LIVE} THEN 'active'
     WHEN s.last_activity_at + make_interval(secs => s.session_ttl) > now() THEN 'idle'
     ELSE 'ended' END"""
LOCK_COLUMNS = f"""CASE WHEN {LIVE} THEN s.active_agent END AS active_agent,
       CASE WHEN {LIVE} THEN s.locked_at END AS locked_at,
       CASE WHEN {LIVE} THEN s.expires_at END AS expires_at"""

# A device is known while any row of it is left: its state, a message or an audit row.
KNOWN = known_device()

# A message still waiting for its answer gets its session id when it is answered;
# until then it belongs to the current session.
CURRENT_COUNT = """(SELECT count(*) FROM conversation_messages m
        WHERE m.tenant_id = s.tenant_id AND m.device_id = s.device_id
          AND (m.session_id = s.session_id OR (m.session_id IS NULL AND m.status = 'pending')))"""

# One row even for an empty page, so the total is always there.
LIST_SESSIONS = f"""
WITH sel AS (
    SELECT * FROM (
        SELECT s.tenant_id, s.device_id, s.session_id, s.last_activity_at, {LOCK_COLUMNS}, {STATUS} AS status
        FROM conversation_states s
        WHERE s.tenant_id = %(tenant)s
    ) f
    WHERE (%(status)s::text IS NULL OR f.status = %(status)s::text)
      AND (%(agent)s::text IS NULL OR f.active_agent = %(agent)s::text)
), page AS (
    SELECT * FROM sel ORDER BY last_activity_at DESC, device_id LIMIT %(limit)s OFFSET %(offset)s
)
SELECT (SELECT count(*) FROM sel) AS total, s.device_id, s.session_id, s.status, s.active_agent,
       s.locked_at, s.expires_at, s.last_activity_at,
       CASE WHEN s.device_id IS NOT NULL THEN {CURRENT_COUNT} END AS message_count
FROM (SELECT 1) one LEFT JOIN page s ON true
ORDER BY s.last_activity_at DESC, s.device_id
"""

GET_STATE = f"""
SELECT s.device_id, s.session_id, s.session_started_at, s.last_activity_at, s.session_ttl, s.context,
       s.version, s.created_at, s.updated_at, {LOCK_COLUMNS}, {STATUS} AS status,
       CASE WHEN {LIVE} AND s.active_agent = '{HUMAN}' THEN s.operator END AS operator,
       {CURRENT_COUNT} AS message_count
FROM conversation_states s WHERE {KEY}
"""

# The current session comes from the state (it may have no messages yet); the
# others only from the ledger, grouped by session id.
HISTORY = f"""
WITH cur AS (
    SELECT s.session_id, s.session_started_at, s.last_activity_at, {STATUS} AS status
    FROM conversation_states s WHERE {KEY} AND s.session_id IS NOT NULL
), grouped AS (
    SELECT COALESCE(m.session_id, CASE WHEN m.status = 'pending' THEN (SELECT session_id FROM cur) END) AS session_id,
           min(m.created_at) AS first_at, max(m.created_at) AS last_at, count(*) AS message_count
    FROM conversation_messages m WHERE m.tenant_id = %(tenant)s AND m.device_id = %(device)s
    GROUP BY 1
)
SELECT k.known, h.* FROM (SELECT {KNOWN} AS known) k
LEFT JOIN LATERAL (
    SELECT COALESCE(cur.session_id, g.session_id) AS session_id,
           COALESCE(cur.status, 'ended') AS status,
           COALESCE(cur.session_started_at, g.first_at) AS started_at,
           GREATEST(cur.last_activity_at, g.last_at) AS last_activity_at,
           COALESCE(g.message_count, 0) AS message_count
    FROM grouped g FULL JOIN cur ON g.session_id = cur.session_id
) h ON k.known
ORDER BY h.started_at DESC NULLS LAST, h.last_activity_at DESC NULLS LAST
"""

MESSAGES = f"""
SELECT k.known, p.* FROM (SELECT {KNOWN} AS known) k
LEFT JOIN LATERAL (
    SELECT m.id, m.role, m.content, m.agent, m.created_at, m.sent_at, m.session_id, m.status, m.has_error,
           m.error_message, m.reply_to, m.processing_time_ms, m.tools_used, {delivery_state("m")} AS delivery
    FROM conversation_messages m
    WHERE m.tenant_id = %(tenant)s AND m.device_id = %(device)s
      AND (%(before)s::bigint IS NULL OR m.id < %(before)s::bigint)
      AND (%(session)s::text IS NULL OR m.session_id = %(session)s::text)
    ORDER BY m.id DESC
    LIMIT %(limit)s
) p ON k.known
ORDER BY p.id DESC
"""

AUDIT = f"""
SELECT k.known, a.* FROM (SELECT {KNOWN} AS known) k
LEFT JOIN LATERAL (
    SELECT id, event, at, from_agent, to_agent, session_id, message_id, db_ms, agent_ms, total_ms
    FROM conversation_audit
    WHERE tenant_id = %(tenant)s AND device_id = %(device)s AND (%(after)s::bigint IS NULL OR id > %(after)s::bigint)
    ORDER BY id
    LIMIT %(limit)s
) a ON k.known
ORDER BY a.id
"""

# Unlike SessionService.update_session_context this never creates a row: an
# unknown device stays unknown (404), even if it is erased while the patch runs.
PATCH_CONTEXT = f"""
UPDATE conversation_states s
SET context = cs_merge_context(s.context, %(patch)s::jsonb, %(cap)s), version = s.version + 1, updated_at = now()
WHERE {KEY}
RETURNING s.context
"""

# FOR UPDATE makes "old" the row as it stands when we hold it, so the audit names
# the agent the operator really displaced.
OVERRIDE_SET = f"""
WITH old AS (
    SELECT s.tenant_id, s.device_id, CASE WHEN {LIVE} THEN s.active_agent END AS agent
    FROM conversation_states s WHERE {KEY}
    FOR UPDATE
), changed AS (
    UPDATE conversation_states s SET
        active_agent = %(agent)s::text,
        locked_at = CASE WHEN old.agent = %(agent)s::text THEN s.locked_at ELSE now() END,
        session_ttl = COALESCE(%(ttl)s::integer, s.session_ttl),
        expires_at = now() + make_interval(secs => COALESCE(%(ttl)s::integer, s.session_ttl)),
        version = s.version + 1,
        updated_at = now()
    FROM old
    WHERE s.tenant_id = old.tenant_id AND s.device_id = old.device_id
    RETURNING s.session_id, s.active_agent, s.locked_at, s.expires_at, s.session_ttl, s.version,
              old.agent AS previous_agent
), audit AS (
    INSERT INTO conversation_audit (tenant_id, device_id, session_id, event, from_agent, to_agent)
    SELECT %(tenant)s, %(device)s, session_id, 'override', previous_agent, active_agent FROM changed
)
SELECT active_agent, locked_at, expires_at, session_ttl, version, previous_agent FROM changed
"""

# A live lock released by the operator is an "override"; a leftover expired one is
# tidied and recorded as "expired", as the cleanup run would have.
OVERRIDE_CLEAR = f"""
WITH old AS (
    SELECT s.tenant_id, s.device_id, s.session_id, s.session_ttl, s.version, s.active_agent AS held,
           CASE WHEN {LIVE} THEN s.active_agent END AS agent
    FROM conversation_states s WHERE {KEY}
    FOR UPDATE
), changed AS (
    UPDATE conversation_states s
    SET active_agent = NULL, locked_at = NULL, expires_at = NULL, version = s.version + 1, updated_at = now()
    FROM old
    WHERE s.tenant_id = old.tenant_id AND s.device_id = old.device_id AND old.held IS NOT NULL
    RETURNING s.version
), audit AS (
    INSERT INTO conversation_audit (tenant_id, device_id, session_id, event, from_agent, to_agent)
    SELECT tenant_id, device_id, session_id, CASE WHEN agent IS NOT NULL THEN 'override' ELSE 'expired' END, held, NULL
    FROM old WHERE held IS NOT NULL
)
SELECT NULL::text AS active_agent, NULL::timestamptz AS locked_at, NULL::timestamptz AS expires_at,
       old.session_ttl, COALESCE((SELECT version FROM changed), old.version) AS version, old.agent AS previous_agent
FROM old
"""

# One statement, so the erasure is all or nothing. The channel ids that deduplicate
# deliveries go with the messages; only their keyed hashes stay, for the replay window
# (app/erasure.py), so a replayed delivery is still a duplicate.
ERASE = f"""
WITH st AS (
    DELETE FROM conversation_states WHERE tenant_id = %(tenant)s AND device_id = %(device)s RETURNING 1
), msg AS (
    DELETE FROM conversation_messages WHERE tenant_id = %(tenant)s AND device_id = %(device)s
    RETURNING external_id, created_at, sent_at
), kept AS ({keep_erased("msg")}
), aud AS (
    DELETE FROM conversation_audit WHERE tenant_id = %(tenant)s AND device_id = %(device)s RETURNING 1
)
SELECT (SELECT count(*) FROM st) AS states, (SELECT count(*) FROM msg) AS messages,
       (SELECT count(*) FROM aud) AS audit
"""

# tenant NULL (the command line without --tenant): all tenants, the averages
# weighted by each tenant's number of locks.
TENANT = "(%(tenant)s::text IS NULL OR {alias}.tenant_id = %(tenant)s::text)"
STATS = f"""
SELECT
    (SELECT COALESCE(jsonb_object_agg(active_agent, n), '{{}}') FROM (
        SELECT a.active_agent, sum(a.active_locks) AS n FROM active_locks_by_agent a
        WHERE {TENANT.format(alias="a")} GROUP BY a.active_agent) x) AS active_locks_by_agent,
    (SELECT COALESCE(sum(e.expired_pending), 0) FROM expired_locks_pending e
        WHERE {TENANT.format(alias="e")}) AS expired_pending,
    (SELECT COALESCE(jsonb_object_agg(active_agent, seconds), '{{}}') FROM (
        SELECT d.active_agent,
               round(sum(d.avg_lock_age_seconds * a.active_locks) / sum(a.active_locks), 3) AS seconds
        FROM lock_duration_by_agent d JOIN active_locks_by_agent a USING (tenant_id, active_agent)
        WHERE {TENANT.format(alias="d")} GROUP BY d.active_agent) y) AS avg_lock_age_seconds_by_agent,
    (SELECT count(*) FROM conversation_messages m
        WHERE {TENANT.format(alias="m")} AND m.created_at > now() - interval '1 hour') AS messages_last_hour,
    c.finished_at AS cleanup_at, c.released AS cleanup_released, c.deleted AS cleanup_deleted,
    c.duration_ms AS cleanup_duration_ms
FROM (SELECT 1) one LEFT JOIN LATERAL (SELECT * FROM cleanup_history LIMIT 1) c ON true
"""
