"""The relay's Prometheus metrics. Names carry their unit; the only label is the topic
(two at most), so cardinality stays fixed."""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Gauge, Histogram

# From a few ms (a small batch to a local broker) to the producer's request timeout.
PUBLISH_LATENCY_BUCKETS_S: Final = (
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
    10.0,
)

EVENTS_PUBLISHED: Final = Counter(
    "vigil_relay_events_published_total",
    "Events the broker acknowledged (republished ones count again), by topic.",
    ["topic"],
)
PUBLISH_LATENCY_SECONDS: Final = Histogram(
    "vigil_relay_publish_latency_seconds",
    "Time from reading a batch from the event store to the broker acknowledging all of it.",
    ["topic"],
    buckets=PUBLISH_LATENCY_BUCKETS_S,
)
LAG_EVENTS: Final = Gauge(
    "vigil_relay_lag_events",
    "Event store head (notification id) minus the published position, by topic.",
    ["topic"],
)
POSITION: Final = Gauge(
    "vigil_relay_position",
    "Highest notification id published and recorded, by topic.",
    ["topic"],
)
EPOCH: Final = Gauge(
    "vigil_relay_epoch",
    "Publishing epoch: incremented each time the broker lost its log and the relay rewound.",
    ["topic"],
)
REWINDS: Final = Counter(
    "vigil_relay_rewinds_total",
    "Rewinds after the broker lost its log, by topic.",
    ["topic"],
)
SEND_FAILURES: Final = Counter(
    "vigil_relay_send_failures_total",
    "Batches that failed to publish and were retried, by topic.",
    ["topic"],
)
OUTBOX_TRIMMED: Final = Counter(
    "vigil_alerts_outbox_trimmed_total",
    "Alerts deleted from the outbox: routed by the case opener, and older than the retention.",
)
