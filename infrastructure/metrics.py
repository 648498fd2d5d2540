"""Prometheus metrics shared by the APIs and workers. Names carry their unit.

Labels are bounded on purpose: routes are templates (`/v1/accounts/{account_id}`),
never raw paths, and unknown HTTP methods collapse into `OTHER`.
"""

from __future__ import annotations

from typing import Any, Final, NamedTuple

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Histogram, generate_latest
from prometheus_client.registry import CollectorRegistry

# From 1 ms (a cached read) to 5 s (a command waiting out a slow group commit).
HTTP_DURATION_BUCKETS_S: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
_KNOWN_METHODS: Final = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}
)

HTTP_REQUESTS_TOTAL: Final = Counter(
    "vigil_http_requests_total",
    "HTTP requests answered, by app, method, route template and status.",
    ["app", "method", "route", "status"],
)
HTTP_REQUEST_DURATION_SECONDS: Final = Histogram(
    "vigil_http_request_duration_seconds",
    "Time from request received to response finished, by app, method and route template.",
    ["app", "method", "route"],
    buckets=HTTP_DURATION_BUCKETS_S,
)
COMMAND_OUTCOMES_TOTAL: Final = Counter(
    "vigil_command_outcomes_total",
    "Commands handled, by command and outcome (`ok` or the problem code).",
    ["command", "code"],
)
FAST_ROUTE_REQUESTS_TOTAL: Final = Counter(
    "vigil_http_fast_route_requests_total",
    "Requests to the money routes by how they were served: `served` past FastAPI's router,"
    " `handed_over` to FastAPI (a request that did not validate).",
    ["outcome"],
)


class Exposition(NamedTuple):
    body: bytes
    content_type: str


# Each label set's counter and histogram, looked up once: `labels()` checks and joins its
# values at every call. As many entries as the metrics have series (routes are templates).
_HTTP_SERIES: dict[tuple[str, str, str, int], tuple[Any, Any]] = {}


def observe_http_request(app: str, method: str, route: str, status: int, duration_s: float) -> None:
    key = (app, method, route, status)
    series = _HTTP_SERIES.get(key)
    if series is None:
        method_label = method if method in _KNOWN_METHODS else "OTHER"
        series = (
            HTTP_REQUESTS_TOTAL.labels(app, method_label, route, str(status)),
            HTTP_REQUEST_DURATION_SECONDS.labels(app, method_label, route),
        )
        if method_label == method:  # a method we do not know is not remembered
            _HTTP_SERIES[key] = series
    requests, duration = series
    requests.inc()
    duration.observe(duration_s)


_OUTCOME_SERIES: dict[tuple[str, str], Any] = {}


def record_command_outcome(command: str, code: str = "ok") -> None:
    """`command` is a fixed name (`account.deposit`); `code` is `ok` or a problem code."""
    series = _OUTCOME_SERIES.get((command, code))
    if series is None:
        series = _OUTCOME_SERIES[command, code] = COMMAND_OUTCOMES_TOTAL.labels(command, code)
    series.inc()


def metrics_response(registry: CollectorRegistry = REGISTRY) -> Exposition:
    """The text exposition of every metric in `registry`, with its content type."""
    return Exposition(generate_latest(registry), CONTENT_TYPE_LATEST)
