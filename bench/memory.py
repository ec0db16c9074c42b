"""Section 6: peak RSS of a fresh process running the Lambda entry handler over many events."""

from __future__ import annotations

import json
from typing import Any

from bench.coldstart import DEPS
from bench.common import Bench, child_env, python

DEPS_RSS = f"import resource; {DEPS}; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"


def run(b: Bench) -> dict[str, Any]:
    """ru_maxrss of one subprocess that handles GET /api/health events one after another."""
    count = b.pick(1000, 100)
    proc = python(["-m", "bench.probe", "events", str(count)], child_env(DATABASE_URL=b.url), own_maxrss=True)
    if proc.returncode:
        raise RuntimeError(f"bench.probe events failed with exit {proc.returncode}: {proc.stderr.strip()[-800:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    deps = python(["-c", DEPS_RSS], child_env(), own_maxrss=True)
    # For scale: what importing the bare dependencies alone costs.
    out["deps_import_peak_rss_mib"] = round(int(deps.stdout.split()[-1]) / 1024, 1) if deps.returncode == 0 else None
    where = out["handler"] + (f" — {out['fallback_reason']}" if out["fallback_reason"] else "")
    print(f"{count:,} GET /api/health events through {where}: statuses {out['statuses']}")
    print(
        f"peak RSS {out['peak_rss_mib']} MiB (VmHWM {out['vm_hwm_mib']} MiB; "
        f"after import {out['peak_rss_after_import_mib']} MiB, "
        f"after the first event {out['peak_rss_after_first_event_mib']} MiB; "
        f"bare dependency import alone {out['deps_import_peak_rss_mib']} MiB); "
        f"event latency p50 {out['event_ms_p50']} ms, p99 {out['event_ms_p99']} ms"
    )
    return out
