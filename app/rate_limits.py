"""Rate limits keyed by something other than a device (a client address), counted in PostgreSQL.

The per-device message limit lives in the ledger's claim (app/ledger/statements.py,
CLAIM): it needs no statement of its own. This module serves the others, one
statement per check, so they hold across every instance of the app.

| statement | what it does                                  | guarantee                                                    |
|-----------|-----------------------------------------------|--------------------------------------------------------------|
| HIT       | count one hit in the key's one-minute window, | the upsert locks the key's row and reads its latest version: |
|           | or refuse it (and change nothing) past limit  | concurrent hits on any instance count one after the other,   |
|           |                                               | so no more than `limit` pass in a window, exactly            |

Windows are fixed, not sliding: one opens with the first hit after the last one ended,
so up to twice the limit can pass in the minute that straddles two windows. The
cleanup run deletes windows that are over (app/cleanup.py, DELETE_OVER_WINDOWS).
"""

from __future__ import annotations

from app import telemetry
from app.core.db import run
from app.core.engine import Engine
from app.errors import RateLimited

NEW_DEVICES = "new_devices"  # scope of RATE_LIMIT_NEW_DEVICES, keyed by client address
WINDOW = "interval '60 seconds'"
OVER = f"(w.window_start <= now() - {WINDOW})"

# Refused: the ON CONFLICT's WHERE leaves the row alone and nothing is returned; the
# wait is then read from the snapshot (advisory: a window opened concurrently, not yet
# visible, gets the full minute).
HIT = f"""
WITH hit AS (
    INSERT INTO rate_limit_windows AS w (scope, key, window_start, hits)
    VALUES (%(scope)s, %(key)s, now(), 1)
    ON CONFLICT (scope, key) DO UPDATE SET
        window_start = CASE WHEN {OVER} THEN now() ELSE w.window_start END,
        hits = CASE WHEN {OVER} THEN 1 ELSE w.hits + 1 END
    WHERE {OVER} OR w.hits < %(limit)s
    RETURNING hits
)
SELECT EXISTS (SELECT 1 FROM hit) AS allowed,
       LEAST(60, GREATEST(1, COALESCE(
           (SELECT ceil(extract(epoch FROM w.window_start + {WINDOW} - now())) FROM rate_limit_windows w
            WHERE w.scope = %(scope)s AND w.key = %(key)s AND NOT {OVER}), 60)))::integer AS retry_after
"""


def hit(engine: Engine, scope: str, key: str, limit: int) -> None:
    """Count one hit for (scope, key); limit hits per minute, 0: no limit (and no statement).

    Raises RateLimited (with the seconds until the window ends) past the limit; the
    refused hit is not counted. StoreUnavailable / StoreError as app.core.db.run.
    """
    if limit <= 0:
        return
    row = run(engine, HIT, {"scope": scope, "key": key, "limit": limit})
    if not row["allowed"]:
        telemetry.rate_limited("address")
        raise RateLimited("too many requests from this address; try again later", row["retry_after"])
