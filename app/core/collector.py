"""The cyclic garbage collector, set for a server that holds many turns at once.

CPython collects its youngest generation every 700 net allocations of container objects
(`gc.get_threshold()`, default (700, 10, 10)), and every tenth of those collections the
next one, and so on; a full collection walks every tracked object, start-up's included:
the modules, the routes and their pydantic schemas, the SQL. A thousand turns in flight
allocate fast, so collections come often and each walks that whole heap. Measured on
section 7 of `make bench` (1,000 concurrent turns of 2 s on one process), the collector
took 0.73 s of the server's 2.4 s of CPU, in five full collections of 46-168 ms, each a
pause of every request on the loop (BENCHMARKS.md, "Run of 2026-12-07, evening").

So a server, once started, moves what start-up made into the permanent generation
(`gc.freeze()`, which no collection walks), after collecting what start-up left, and
collects its youngest generation every GEN0_THRESHOLD allocations. Reference counting
still frees nearly everything at once; only garbage in cycles waits for a collection,
and a bigger first generation holds at most a few thousand such objects longer.
"""

from __future__ import annotations

import gc
import logging

logger = logging.getLogger(__name__)

# Container allocations between two collections of the youngest generation (CPython's default: 700).
GEN0_THRESHOLD = 10_000

_settled = False


def settle_after_start() -> None:
    """Freeze start-up's objects and raise the youngest generation's threshold; once per process.

    Called by a server's lifespan after every route module is loaded. Later calls (another
    app's lifespan in the same process, as in tests) change nothing: each freeze would keep
    that moment's objects out of every later collection.
    """
    global _settled
    if _settled:
        return
    _settled = True
    gc.collect()  # what start-up left as garbage is freed, not frozen
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)
    logger.debug("garbage collector: %s objects frozen, thresholds %s", gc.get_freeze_count(), gc.get_threshold())
