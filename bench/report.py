"""Markdown tables from a results file: `python -m bench.report [bench/results/latest.json]`."""

# BENCHMARKS.md quotes this output, so every number there comes from a recorded run.

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from bench import locks, pipeline
from bench.common import RESULTS, cell


def md(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def render(report: dict[str, Any]) -> str:
    m, s = report["machine"], report["sections"]
    pg = m["postgres_settings"]
    out = [
        f"Command: `{report['command']}` ({report['mode']}), {m['date']}, {report['total_seconds']} s.",
        f"Machine: {m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB, {m['platform']}, Python {m['python']}; "
        f"PostgreSQL {m['postgres_version']} from {m['postgres_origin'].split(' (')[0]} "
        f"(fsync={pg['fsync']}, synchronous_commit={pg['synchronous_commit']}, "
        f"shared_buffers={pg['shared_buffers']}); commit {m['git_commit']}"
        f"{' + uncommitted app/ changes' if m.get('app_uncommitted_changes') else ''}; "
        f"load average at start {m['loadavg_1m_at_start']}.",
    ]
    if "locks" in s and "results" in s["locks"]:
        lk = s["locks"]
        out.append(
            f"\n### 1. Lock operations ({lk['devices']:,} devices, {lk['rounds']} rounds of {lk['window_s']} s)\n"
        )
        rows = []
        for op in ("get", "set", "mix"):
            r, q = lk["results"][op], lk["ratios"][op]
            rows.append(
                [
                    op,
                    r["service"]["ops_per_s"],
                    r["bare_psycopg"]["ops_per_s"],
                    r["naive_orm"]["ops_per_s"],
                    (r["pgbench"] or {}).get("ops_per_s"),
                    q["service/bare_psycopg"],
                    q["service/naive_orm"],
                    q["service/pgbench"],
                    q["bare_psycopg/pgbench"],
                    q.get("bare_psycopg/naive_orm"),
                ]
            )
        out.append(md(locks.HEADERS, rows))
        out.append(
            "\n"
            + md(
                ["op", "implementation", "p50 ms", "p99 ms", "op/s per round"],
                [
                    [
                        op,
                        name,
                        lk["results"][op][name]["p50_ms"],
                        lk["results"][op][name]["p99_ms"],
                        ", ".join(cell(v) for v in lk["results"][op][name]["ops_per_s_rounds"]),
                    ]
                    for op in ("get", "set", "mix")
                    for name in ("service", "bare_psycopg", "naive_orm")
                ],
            )
        )
    if "peers" in s and "results" in s["peers"]:
        pr = s["peers"]
        out.append(f"\n### 2. Peers ({pr['threads']:,} devices/threads, {pr['rounds']} rounds of {pr['window_s']} s)\n")
        rows = []
        for name, state in pr["status"].items():
            put_call, get_call = pr["calls"][name]
            if state != "ok":
                rows.append([name, put_call, state, None, get_call, None, None])
                continue
            other = name != "service"
            rows.append(
                [
                    name,
                    put_call,
                    pr["results"]["set"][name]["ops_per_s"],
                    pr["ratios"]["set"][f"service/{name}"] if other else None,
                    get_call,
                    pr["results"]["get"][name]["ops_per_s"],
                    pr["ratios"]["get"][f"service/{name}"] if other else None,
                ]
            )
        out.append(md(["peer", "set-like call", "op/s", "svc/peer", "get-like call", "op/s", "svc/peer"], rows))
    out.append(_pipeline(s.get("pipeline") or {}))
    if "cleanup" in s and "runs" in s["cleanup"]:
        cl = s["cleanup"]
        out.append(f"\n### 4. Cleanup ({cl['rows']:,} rows, {cl['expired']:,} expired locks)\n")
        busy = cl["latency"]["during_cleanup"]["cleanup"]
        rows = [
            [r["batch_size"], r["released"], r["seconds"], r["released_per_s"], r.get("loadavg_1m_before")]
            for r in cl["runs"]
        ]
        rows.append(
            [
                f"{busy['batch_size']}, with live traffic",
                busy["released"],
                busy["seconds"],
                busy["released_per_s"],
                busy.get("loadavg_1m_before"),
            ]
        )
        out.append(md(["batch size", "released", "seconds", "released/s", "load before"], rows))
        lat = cl["latency"]
        out.append(
            f"\nLive traffic (~{lat['traffic_ops_per_s_target']} op/s, 80% get / 20% set, second thread), "
            f"{lat['window_s']} s windows; p99 during/without = {lat['p99_ratio']}\n"
        )
        out.append(
            md(
                ["traffic", "ops", "p50 ms", "p99 ms", "max ms"],
                [
                    [label, lat[key]["ops"], lat[key]["p50_ms"], lat[key]["p99_ms"], lat[key]["max_ms"]]
                    for label, key in (("without cleanup", "without_cleanup"), ("during cleanup", "during_cleanup"))
                ],
            )
        )
        out.append(_retention(cl.get("retention") or {}))
    if "coldstart" in s and "median_ms" in s["coldstart"]:
        cs = s["coldstart"]
        out.append(f"\n### 5. Cold start (median of {cs['runs']} fresh processes)\n")
        if cs.get("note"):
            out.append(f"Note: {cs['note']}\n")
        med, cmd, before = cs["median_ms"], cs["commands"], cs.get("before_commit")
        rows = [
            [f'`python -c "{cmd["app"]}"`', med["app"]],
            [f'`python -c "{cmd["deps"]}"` (the request path\'s packages)', med["deps"]],
        ]
        if "app_before" in med:
            rows += [
                [f'`python -c "{cmd["app_before"]}"` at {before}', med["app_before"]],
                [f'`python -c "{cmd["deps_before"]}"` (the bare import compared before)', med["deps_before"]],
            ]
        rows.append(["`python -c pass`", med["interpreter"]])
        out.append(md(["command", "median ms"], rows))
        out.append(
            f"\nRatio app/deps: {cs['ratio_app/deps']} (interpreter start subtracted: "
            f"{cs['ratio_app/deps_without_interpreter']})"
            + (f"; at {before}: {cs['ratio_app_before/deps_before']}." if "app_before" in med else ".")
        )
        for label, key, rss_key in (
            ("Now", "first_request", "rss"),
            (f"At {before}", "first_request_before", "rss_before"),
        ):
            fr, rss = cs.get(key), cs.get(rss_key)
            if not fr:
                continue
            out.append(
                f"{label}: first GET /api/health through {fr['handler']} in a fresh process (median of "
                f"{fr['processes']}): import {fr['median_import_ms']} ms, first request "
                f"{fr['median_first_request_ms']} ms including the DB connect, second request "
                f"{fr['median_second_request_ms']} ms; status {fr['status']}"
                + (
                    f"; peak RSS over {rss['events']:,} events {rss['peak_rss_mib']} MiB (after import "
                    f"{rss['peak_rss_after_import_mib']} MiB)."
                    if rss
                    else "."
                )
            )
    if "memory" in s and "peak_rss_mib" in s["memory"]:
        me = s["memory"]
        out.append(
            f"\n### 6. Memory\n\n{me['events']:,} GET /api/health events through {me['handler']}: peak RSS "
            f"{me['peak_rss_mib']} MiB (ru_maxrss; VmHWM {me['vm_hwm_mib']} MiB); after import "
            f"{me['peak_rss_after_import_mib']} MiB, after the first event "
            f"{me['peak_rss_after_first_event_mib']} MiB; importing the bare dependencies alone: "
            f"{me['deps_import_peak_rss_mib']} MiB. Statuses {me['statuses']}; "
            f"event latency p50 {me['event_ms_p50']} ms, p99 {me['event_ms_p99']} ms."
        )
    out.append("\n### Targets\n")
    targets = [[t["target"], t["value"], t["status"]] for t in report["targets"]]
    out.append(md(["target", "measured", "status"], targets))
    for note in report.get("notes", []):
        out.append(f"\nNote: {note}")
    return "\n".join(out)


def _pipeline(p: dict[str, Any]) -> str:
    if "http" not in p:
        return "\n### 3. Pipeline end-to-end\n\n" + p.get("status", p.get("error", "not run"))
    cl = p["cleanup"]
    out = [f"\n### 3. Pipeline end-to-end ({p['clients']} client threads over {p['devices']:,} devices)\n"]
    for label, rt in p["round_trips"].items():
        out.append(
            f"Round trips, agent {label}: {rt['messages']:,} messages through `app.pipeline.Pipeline` on the "
            f"production engine, one at a time: {rt['per_message_mean']} statements per message on average, at most "
            f"{rt['per_message_max']} (histogram {rt['histogram']}); {rt['unexpected_results']} unexpected results; "
            f"{rt['messages_per_s_one_thread']:,} messages/s in one thread ({rt['ms_per_message']} ms per message, "
            f"{rt['db_ms_per_message']} ms of it inside the statements).\n"
        )
    if p.get("history_msg_s_ratio") is not None:
        out.append(f"2 workers, messages/s with agent history 20 / without: {p['history_msg_s_ratio']}.\n")
    rows = [pipeline.http_row(name, h, spread=True) for name, h in p["http"].items()]
    out.append(
        md(
            [*pipeline.HEADERS[:5], "msg/s min-max per s", *pipeline.HEADERS[5:]],
            rows,
        )
    )
    out.append(
        "\nCommands (port chosen at run time): "
        + "; ".join(f"{name}: `{h['command']}`" for name, h in p["http"].items())
        + "."
    )
    c = cl["cleanup"]
    out.append(
        f"\n2 workers while `run_cleanup` releases {cl['expired']:,} expired locks: released "
        f"{c['released']:,} in {c['seconds']} s ({c['released_per_s']:,}/s); p99 during/without = "
        f"{cl['p99_ratio']}\n"
    )
    out.append(
        md(
            ["window", "seconds", "messages", "msg/s", "p50 ms", "p99 ms", "max ms", "non-200", "degraded"],
            [
                [
                    label,
                    cl[key]["seconds"],
                    cl[key]["messages"],
                    cl[key]["messages_per_s"],
                    cl[key]["p50_ms"],
                    cl[key]["p99_ms"],
                    cl[key]["max_ms"],
                    cl[key]["non_200"],
                    cl[key]["degraded"],
                ]
                for label, key in (
                    ("before", "before"),
                    ("during cleanup", "during_cleanup"),
                    ("after", "after"),
                    ("without (before + after)", "without_cleanup"),
                )
            ],
        )
    )
    cq, cb = cl["cpu_without"], cl["cpu_during"]
    out.append(
        f"\nCPU shares without / during cleanup: client {_pct(cq['client_share'])} / "
        f"{_pct(cb['client_share'])}, server {_pct(cq['server_share'])} / {_pct(cb['server_share'])}, "
        f"PostgreSQL {_pct(cq['postgres_share'])} / {_pct(cb['postgres_share'])}, machine busy "
        f"{_pct(cq['machine_busy_share'])} / {_pct(cb['machine_busy_share'])}."
    )
    return "\n".join(out)


def _retention(r: dict[str, Any]) -> str:
    if "alone" not in r:
        return f"\nRetention pass: {r.get('status', 'not run')}."
    lat = r["latency"]
    busy = lat["during_retention"]["cleanup"]
    out = [
        (
            f"\nRetention pass: {r['orphans']:,} orphaned rows (no lock, lease or pending message, last active 3 days "
            f"ago) beside {r['live_rows']:,} locked rows, deleted by `run_batches(engine, DELETE_ORPHANS, "
            f'{{"hours": {r["orphan_after_hours"]}}}, batch_size={r["batch_size"]:,}, deadline=None)`; locked rows '
            f"left afterwards: {r['live_rows_left']:,}.\n"
        )
    ]
    out.append(
        md(
            ["run", "deleted", "seconds", "deleted/s", "load before"],
            [
                [
                    "alone",
                    r["alone"]["deleted"],
                    r["alone"]["seconds"],
                    r["alone"]["deleted_per_s"],
                    r["alone"]["loadavg_1m_before"],
                ],
                [
                    "with live traffic",
                    busy["deleted"],
                    busy["seconds"],
                    busy["deleted_per_s"],
                    busy["loadavg_1m_before"],
                ],
            ],
        )
    )
    out.append(f"\nLive traffic as above, {lat['window_s']} s quiet window; p99 during/without = {lat['p99_ratio']}\n")
    out.append(
        md(
            ["traffic", "ops", "p50 ms", "p99 ms", "max ms"],
            [
                [label, lat[key]["ops"], lat[key]["p50_ms"], lat[key]["p99_ms"], lat[key]["max_ms"]]
                for label, key in (("without retention", "without_retention"), ("during retention", "during_retention"))
            ],
        )
    )
    return "\n".join(out)


def _pct(share: float | None) -> str:
    return "-" if share is None else f"{share:.0%}"


if __name__ == "__main__":
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS / "latest.json"
    print(render(json.loads(path.read_text())))
