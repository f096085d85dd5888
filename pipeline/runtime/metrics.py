"""Prometheus metrics: one object, built with a registry (never the global one in library code).

Names carry units and `_total` on counters; labels stay low-cardinality (topic, type, rule,
handler, reason class) and never hold a customer, order or event id.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    start_http_server,
)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


@dataclass(frozen=True)
class Metrics:
    """Every metric a worker exports."""

    registry: CollectorRegistry
    events: Counter
    dead_letters: Counter
    duplicates: Counter
    rekeyed: Counter
    late_events: Counter
    offset_gaps: Counter
    exceptions: Counter
    processing_latency: Histogram
    gc_pause: Histogram
    detection_latency: Histogram
    watermark_lag: Gauge
    pending_deadlines: Gauge
    routed: Counter
    open_exceptions: Gauge
    capacity: Gauge
    oldest_open_age: Gauge
    sla_breaches: Counter
    resolutions: Counter
    utilization: Gauge
    resolution_time: Histogram
    consumer_lag: Gauge
    table_entries: Gauge
    up: Gauge
    api_requests: Counter
    api_latency: Histogram
    case_errors: Counter
    cases_expired: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None) -> Metrics:
        """Build every metric on `registry` (a fresh one by default)."""
        reg = registry if registry is not None else CollectorRegistry()
        # process_cpu_seconds_total, process_resident_memory_bytes, ...: a worker's CPU against
        # the one core it can use (the dashboard's Workers row)
        ProcessCollector(registry=reg)
        return cls(
            registry=reg,
            events=Counter(
                "casewatch_events_total", "Valid events consumed.", ["topic", "type"], registry=reg
            ),
            dead_letters=Counter(
                "casewatch_dead_letters_total",
                "Messages sent to the dead-letter topic, by error class.",
                ["topic", "error_class"],
                registry=reg,
            ),
            duplicates=Counter(
                "casewatch_duplicate_events_total",
                "Events ignored as repeats of an event_id.",
                ["topic"],
                registry=reg,
            ),
            rekeyed=Counter(
                "casewatch_rekeyed_events_total",
                "Events whose Kafka key was not their customer_id, re-keyed through the rekey topic.",
                ["topic"],
                registry=reg,
            ),
            late_events=Counter(
                "casewatch_late_events_total",
                "Events older than their partition's clock when they arrived (processed anyway).",
                ["topic"],
                registry=reg,
            ),
            offset_gaps=Counter(
                "casewatch_offset_gaps_total",
                "Runs of offsets the broker did not send (compaction, transaction markers), "
                "committed without processing.",
                ["topic"],
                registry=reg,
            ),
            exceptions=Counter(
                "casewatch_exceptions_total",
                "Exception records published.",
                ["rule", "severity", "status"],
                registry=reg,
            ),
            processing_latency=Histogram(
                "casewatch_processing_latency_seconds",
                "From consuming an event to its outputs being acknowledged.",
                buckets=_LATENCY_BUCKETS,
                registry=reg,
            ),
            gc_pause=Histogram(
                "casewatch_gc_pause_seconds",
                "Garbage-collector pauses: every thread of the worker waits (generation 2: a full "
                "collection).",
                ["generation"],
                buckets=_LATENCY_BUCKETS,
                registry=reg,
            ),
            detection_latency=Histogram(
                "casewatch_detection_latency_seconds",
                "From the event time (or deadline) of an exception to its publication.",
                ["rule"],
                buckets=(*_LATENCY_BUCKETS, 300, 3600),
                registry=reg,
            ),
            watermark_lag=Gauge(
                "casewatch_watermark_lag_seconds",
                "Wall clock minus the event-time watermark, per partition.",
                ["partition"],
                registry=reg,
            ),
            pending_deadlines=Gauge(
                "casewatch_pending_deadlines",
                "Customers with a deadline armed (e.g. shipped orders awaiting delivery).",
                registry=reg,
            ),
            routed=Counter(
                "casewatch_routed_total",
                "Exception records sent to a handler, by reason (normal, overflow, escalation, reassigned).",
                ["handler", "reason"],
                registry=reg,
            ),
            open_exceptions=Gauge(
                "casewatch_open_exceptions",
                "Exceptions a handler holds open (routed, not yet resolved).",
                ["handler"],
                registry=reg,
            ),
            capacity=Gauge(
                "casewatch_handler_capacity",
                "Most exceptions a handler may hold open at once (from the config).",
                ["handler"],
                registry=reg,
            ),
            oldest_open_age=Gauge(
                "casewatch_oldest_open_age_seconds",
                "Wall clock minus the event time the handler's oldest open exception was routed to it.",
                ["handler"],
                registry=reg,
            ),
            sla_breaches=Counter(
                "casewatch_sla_breaches_total",
                "Exceptions still open past their handler's resolve_within.",
                ["handler"],
                registry=reg,
            ),
            resolutions=Counter(
                "casewatch_resolutions_total",
                "Handler updates received, by status (acknowledged, resolved, reassigned).",
                ["handler", "status"],
                registry=reg,
            ),
            utilization=Gauge(
                "casewatch_handler_utilization_ratio",
                "Open exceptions over capacity, per handler (1 = full; above 1 = over capacity).",
                ["handler"],
                registry=reg,
            ),
            resolution_time=Histogram(
                "casewatch_resolution_time_seconds",
                "From routing to a handler's resolution (event time), per handler.",
                ["handler"],
                buckets=(60, 300, 900, 1800, 3600, 4 * 3600, 8 * 3600, 86400, 3 * 86400, 7 * 86400),
                registry=reg,
            ),
            consumer_lag=Gauge(
                "casewatch_consumer_lag_messages",
                "Messages on a partition this worker has not fetched yet (high water - position).",
                ["topic", "partition"],
                registry=reg,
            ),
            table_entries=Gauge(
                "casewatch_table_entries",
                "Keys held in a table by this worker (customers, dispatch).",
                ["table"],
                registry=reg,
            ),
            up=Gauge("casewatch_worker_up", "1 while the worker is processing.", registry=reg),
            api_requests=Counter(
                "casewatch_api_requests_total",
                "Case API requests answered, by route and HTTP status.",
                ["route", "status"],
                registry=reg,
            ),
            api_latency=Histogram(
                "casewatch_api_request_seconds",
                "Time to answer a case API request (passed-on requests included), by route.",
                ["route"],
                buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
                registry=reg,
            ),
            case_errors=Counter(
                "casewatch_case_fold_errors_total",
                "Records of the exception log or resolutions the case view could not take.",
                ["what"],
                registry=reg,
            ),
            cases_expired=Counter(
                "casewatch_cases_expired_total",
                "Closed cases dropped from the case view by the sweep, past the retention.",
                registry=reg,
            ),
        )

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        """Serve `/metrics` on `port` from a background thread."""
        start_http_server(port, addr=addr, registry=self.registry)
