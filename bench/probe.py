"""In a fresh process: `python -m bench.probe first` or `python -m bench.probe events N`; prints JSON."""

# `first` times the import and the first request; `events N` runs N requests and reports
# peak RSS. Only the standard library is imported before the handler, so it is all the app's.

from __future__ import annotations

import importlib
import json
import resource
import sys
import time
import uuid


def load_handler() -> tuple[object, str, str | None]:
    """The Lambda entry point: app.lambda_handler's handler, else app.main's app behind Mangum."""
    try:
        module = importlib.import_module("app.lambda_handler")
        handler = getattr(module, "handler", None) or getattr(module, "lambda_handler", None)
        if handler is not None:
            return handler, "app.lambda_handler", None
        reason = "app.lambda_handler has no `handler`"
    except Exception as err:  # noqa: BLE001 - the module is still being written; say why and fall back
        reason = f"app.lambda_handler not importable ({type(err).__name__}: {err})"
    from mangum import Mangum

    from app.main import create_app

    return Mangum(create_app(serverless=True), lifespan="off"), "app.main create_app() behind Mangum", reason


def http_api_event(path: str = "/api/health", method: str = "GET") -> dict:
    """An API Gateway HTTP API (payload format 2.0) event as Lambda receives it."""
    now = time.time()
    host = "abc123defg.execute-api.eu-west-1.amazonaws.com"
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": "",
        "headers": {
            "accept": "application/json",
            "host": host,
            "user-agent": "agent-sessions-bench",
            "x-amzn-trace-id": "Root=1-00000000-000000000000000000000000",
            "x-forwarded-for": "127.0.0.1",
            "x-forwarded-port": "443",
            "x-forwarded-proto": "https",
        },
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "abc123defg",
            "domainName": host,
            "domainPrefix": "abc123defg",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1",
                "userAgent": "agent-sessions-bench",
            },
            "requestId": uuid.uuid4().hex,
            "routeKey": "$default",
            "stage": "$default",
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "timeEpoch": int(now * 1000),
        },
        "isBase64Encoded": False,
    }


class LambdaContext:
    """The attributes of the context object the Lambda Python runtime passes."""

    function_name = "agent-sessions"
    function_version = "$LATEST"
    invoked_function_arn = "arn:aws:lambda:eu-west-1:123456789012:function:agent-sessions"
    memory_limit_in_mb = 512
    log_group_name = "/aws/lambda/agent-sessions"
    log_stream_name = "bench"

    def __init__(self) -> None:
        self.aws_request_id = str(uuid.uuid4())
        self._deadline = time.monotonic() + 30

    def get_remaining_time_in_millis(self) -> int:
        return int((self._deadline - time.monotonic()) * 1000)


def rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # ru_maxrss is KiB on Linux


def hwm_mib() -> float | None:
    """VmHWM, the kernel's peak RSS of this process image: a cross-check of ru_maxrss."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def first() -> dict:
    t0 = time.perf_counter()
    handler, source, fallback = load_handler()
    t1 = time.perf_counter()
    response = handler(http_api_event(), LambdaContext())
    t2 = time.perf_counter()
    second = handler(http_api_event(), LambdaContext())
    t3 = time.perf_counter()
    return {
        "handler": source,
        "fallback_reason": fallback,
        "import_ms": round((t1 - t0) * 1000, 1),
        "first_request_ms": round((t2 - t1) * 1000, 1),
        "second_request_ms": round((t3 - t2) * 1000, 1),
        "status": response.get("statusCode"),
        "second_status": second.get("statusCode"),
        "body": str(response.get("body"))[:200],
    }


def events(count: int) -> dict:
    base = rss_mib()
    handler, source, fallback = load_handler()
    after_import = rss_mib()
    statuses: dict[int, int] = {}
    latencies = []
    after_first = None
    for i in range(count):
        t0 = time.perf_counter()
        code = handler(http_api_event(), LambdaContext()).get("statusCode")
        latencies.append(time.perf_counter() - t0)
        statuses[code] = statuses.get(code, 0) + 1
        if i == 0:
            after_first = rss_mib()
    latencies.sort()
    return {
        "handler": source,
        "fallback_reason": fallback,
        "events": count,
        "statuses": statuses,
        "peak_rss_mib": rss_mib(),
        "vm_hwm_mib": hwm_mib(),
        "rss_at_start_mib": base,
        "peak_rss_after_import_mib": after_import,
        "peak_rss_after_first_event_mib": after_first,
        "event_ms_p50": round(latencies[len(latencies) // 2] * 1000, 2),
        "event_ms_p99": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000, 2),
    }


if __name__ == "__main__":
    mode = sys.argv[1]
    print(json.dumps(first() if mode == "first" else events(int(sys.argv[2]))))
