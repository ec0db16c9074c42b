"""The SQL of streamed replies: the turn's draft, the stop request and what a reader sees.

| statement | who runs it                         | guarantee                                                                  |
|-----------|-------------------------------------|----------------------------------------------------------------------------|
| APPEND    | the turn's worker, at most once per  | fenced: writes only while the worker's lease epoch is the device's live    |
|           | STREAM_FLUSH_MS while text arrives   | one, never over a newer turn's draft; a draft of another turn (epoch,      |
|           |                                     | attempt or messages differ) is replaced, keeping a stop request; returns   |
|           |                                     | whether a stop was asked for one of the turn's messages (no row: lost)     |
| CHECK     | the turn's worker while no text      | reads only; whether a stop was asked for one of the turn's messages        |
|           | arrives, at most every STOP_CHECK    |                                                                            |
| STOP      | POST /api/chat/stop, any instance    | one statement; marks the device's oldest pending message to stop (the     |
|           |                                     | turn in flight, as messages are answered in order); says whether one ran  |
|           |                                     | and whether a stop was already asked; nothing pending: nothing written     |
|           |                                     | and nothing notified; else NOTIFY STOP_CHANNEL [tenant, device] at commit  |
| INTERRUPT | a new message's request, with        | one statement; as STOP, for the turn in flight only when it is another   |
|           | BURST_MODE=interrupt, any instance  | turn than the new message's: the oldest pending message started before   |
|           |                                     | it (attempts > 0) while the new one is pending, not started; read in one |
|           |                                     | snapshot, so a turn that takes the new message in is never the target   |
| READ      | a stream reader, any instance       | reads only; the draft (text from an offset when it is the same turn), the  |
|           |                                     | followed message's status, its stored reply and the lock after it, and     |
|           |                                     | whether the device's lease is live (a dead producer: a rerun is due)       |

The finish statement (app/ledger/statements.py FINISH) deletes the device's draft in
the same statement that stores the reply.
"""

from __future__ import annotations

from app.sql import live_agent, live_until

# What STOP and INTERRUPT notify (a JSON array [tenant, device]); app/streams/signals.py listens.
STOP_CHANNEL = "agent_sessions_stop"


def key(alias: str = "") -> str:
    """The device's rows: alias.tenant_id and alias.device_id are the statement's parameters."""
    prefix = f"{alias}." if alias else ""
    return f"{prefix}tenant_id = %(tenant)s AND {prefix}device_id = %(device)s"


KEY = key()

APPEND = f"""
INSERT INTO conversation_drafts AS d (tenant_id, device_id, epoch, attempt, message_ids, text, events, updated_at)
SELECT %(tenant)s, %(device)s, %(epoch)s, %(attempt)s, %(ids)s::bigint[], %(delta)s, %(events)s::jsonb, now()
FROM conversation_states s
WHERE {key("s")} AND s.lease_epoch = %(epoch)s AND s.lease_expires_at > now()
ON CONFLICT (tenant_id, device_id) DO UPDATE SET
    text = CASE WHEN (d.epoch, d.attempt, d.message_ids) = (EXCLUDED.epoch, EXCLUDED.attempt, EXCLUDED.message_ids)
                THEN d.text || EXCLUDED.text ELSE EXCLUDED.text END,
    events = CASE WHEN (d.epoch, d.attempt, d.message_ids) = (EXCLUDED.epoch, EXCLUDED.attempt, EXCLUDED.message_ids)
                  THEN d.events || EXCLUDED.events ELSE EXCLUDED.events END,
    epoch = EXCLUDED.epoch, attempt = EXCLUDED.attempt, message_ids = EXCLUDED.message_ids, updated_at = now()
WHERE d.epoch <= EXCLUDED.epoch
RETURNING COALESCE(d.stop_message_id = ANY(d.message_ids), false) AS stop
"""

CHECK = f"""
SELECT COALESCE(stop_message_id = ANY(%(ids)s::bigint[]), false) AS stop FROM conversation_drafts WHERE {KEY}
"""


def stop(target: str) -> str:
    """Ask the turn on the message `target` selects (a query of one row, column id) to stop."""
    return f"""
WITH target AS ({target}), old AS (
    SELECT stop_message_id FROM conversation_drafts WHERE {KEY}
), lease AS (
    SELECT lease_epoch FROM conversation_states WHERE {KEY}
), asked AS (
    INSERT INTO conversation_drafts AS d (tenant_id, device_id, epoch, attempt, message_ids, stop_message_id)
    SELECT %(tenant)s, %(device)s, COALESCE((SELECT lease_epoch FROM lease), 0), 0, '{{}}', target.id
    FROM target WHERE target.id IS NOT NULL
    ON CONFLICT (tenant_id, device_id) DO UPDATE SET stop_message_id = EXCLUDED.stop_message_id, updated_at = now()
    RETURNING 1
)
SELECT (SELECT id FROM target) AS message_id,
       (SELECT stop_message_id FROM old) IS NOT DISTINCT FROM (SELECT id FROM target) AS already,
       EXISTS (SELECT 1 FROM asked) AS asked,
       -- delivered at commit to every StopListener (app/streams/signals.py)
       CASE WHEN EXISTS (SELECT 1 FROM asked)
            THEN pg_notify('{STOP_CHANNEL}', json_build_array(%(tenant)s::text, %(device)s::text)::text) END AS notified
"""


# The turn in flight is the device's oldest pending message's: messages are answered in
# id order (a merged burst's turn includes it). Its worker sees the request at its next
# append or check. A draft of another turn keeps its text: its own worker replaces it.
STOP = stop(f"SELECT min(id) AS id FROM conversation_messages WHERE {KEY} AND status = 'pending'")

# BURST_MODE=interrupt, for the new message %(before)s: a message's attempts count the turns
# started on it (0: none yet), and a turn's messages start together. So when the new message
# has not started and an older pending one has, the older one's turn is in flight without it;
# a finish or NEXT that takes the new message in after this snapshot also settles the older
# one, whose stop then matches no turn.
INTERRUPT = stop(f"""
    SELECT min(id) AS id FROM conversation_messages
    WHERE {KEY} AND status = 'pending' AND id < %(before)s AND attempts > 0
      AND EXISTS (SELECT 1 FROM conversation_messages n
                  WHERE {key("n")} AND n.id = %(before)s AND n.status = 'pending' AND n.attempts = 0)""")

# %(message_id)s: the message followed (0: the device's oldest pending one, a resume).
READ = f"""
WITH target AS (
    SELECT COALESCE(NULLIF(%(message_id)s::bigint, 0),
                    (SELECT min(id) FROM conversation_messages WHERE {KEY} AND status = 'pending')) AS id
), m AS (
    SELECT m.id, m.status, COALESCE(m.merged_into, m.id) AS answered_by
    FROM conversation_messages m, target
    WHERE {key("m")} AND m.id = target.id
), r AS (
    SELECT r.id, r.content, r.agent, r.metadata FROM conversation_messages r, m
    WHERE {key("r")} AND r.reply_to = m.answered_by AND r.role = 'assistant'
      AND m.status IN ('done', 'failed')
    ORDER BY r.id LIMIT 1
), d AS (
    SELECT d.epoch, d.attempt, d.message_ids, d.events,
           (d.epoch, d.attempt) = (%(epoch)s::bigint, %(attempt)s::integer) AS same,
           CASE WHEN (d.epoch, d.attempt) = (%(epoch)s::bigint, %(attempt)s::integer)
                THEN substr(d.text, %(offset)s::integer + 1) ELSE d.text END AS text
    FROM conversation_drafts d, m WHERE {key("d")} AND m.id = ANY(d.message_ids)
), st AS (
    SELECT s.lease_expires_at > now() AS live, {live_agent("s")} AS lock_agent, {live_until("s")} AS lock_expires_at
    FROM conversation_states s WHERE {key("s")}
)
SELECT m.id AS message_id, m.status, r.id AS reply_id, r.content AS reply, r.agent AS reply_agent,
       r.metadata AS reply_metadata, d.epoch, d.attempt, d.same, d.text, d.events,
       COALESCE(st.live, false) AS live, st.lock_agent, st.lock_expires_at
FROM (SELECT 1) one LEFT JOIN m ON true LEFT JOIN r ON true LEFT JOIN d ON true LEFT JOIN st ON true
"""
