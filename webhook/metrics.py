"""Prometheus metrics, one registry for the process. Names follow Kueue's where the meaning matches
(``pending_workloads``, ``admitted_active_workloads``, ``admission_wait_time_seconds``) so existing
dashboards and alerts read naturally."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)
_NS = "gpu_queue"

ADMISSION_LATENCY = Histogram(
    "admission_request_duration_seconds",
    "Time to answer an AdmissionReview, by handler (mutate/validate) and outcome",
    ["handler", "outcome"],
    namespace=_NS,
    registry=REGISTRY,
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0),
)
ADMISSION_REQUESTS = Counter(
    "admission_requests_total",
    "AdmissionReviews answered, by handler and outcome (allowed, patched, denied, bad_request, error)",
    ["handler", "outcome"],
    namespace=_NS,
    registry=REGISTRY,
)
PENDING = Gauge("pending_workloads", "Pods waiting in a pool's FIFO", ["pool"], namespace=_NS, registry=REGISTRY)
ADMITTED_ACTIVE = Gauge(
    "admitted_active_workloads",
    "Pods of a pool holding a slice (ungated, not finished)",
    ["pool"],
    namespace=_NS,
    registry=REGISTRY,
)
CAPACITY = Gauge("capacity_slices", "Slices a pool may hand out", ["pool"], namespace=_NS, registry=REGISTRY)
IN_USE = Gauge(
    "in_use_slices",
    "Slices in use in a pool, including other pods requesting the resource on its nodes",
    ["pool"],
    namespace=_NS,
    registry=REGISTRY,
)
WAIT_TIME = Histogram(
    "admission_wait_time_seconds",
    "Time from requested-at to the gate's removal",
    ["pool"],
    namespace=_NS,
    registry=REGISTRY,
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400),
)
GATE_REMOVAL_LATENCY = Histogram(
    "gate_removal_latency_seconds",
    "Time from the controller seeing a free slice to the head's gate being removed",
    ["pool"],
    namespace=_NS,
    registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
GRANTS = Counter("grants_total", "Gates removed", ["pool"], namespace=_NS, registry=REGISTRY)
STUCK = Counter(
    "stuck_workloads_total",
    "Granted pods not Ready within admitTimeoutSeconds, by action (slow: starting and kept; kept; released)",
    ["pool", "action"],
    namespace=_NS,
    registry=REGISTRY,
)
HOLD_LIMIT = Counter(
    "hold_limit_total",
    "Hold-limit actions while others waited: warned, stopped, withdrawn (the queue emptied), failed",
    ["pool", "action"],
    namespace=_NS,
    registry=REGISTRY,
)
GROUP_CAPPED = Gauge(
    "group_capped_pending",
    "Queued pods held back by their group's limit (slices may be free)",
    ["pool"],
    namespace=_NS,
    registry=REGISTRY,
)
REDIS_ERRORS = Counter(
    "redis_errors_total", "Failed Redis operations, by operation", ["op"], namespace=_NS, registry=REGISTRY
)
ADMISSION_NOTES_MISSED = Counter(
    "admission_notes_missed_total",
    "Pool pods /mutate could not note in Redis, so stamped orderSettleSeconds later (no early grant overtakes them)",
    namespace=_NS,
    registry=REGISTRY,
)
EARLY_GRANTS = Counter(
    "early_grants_total",
    "Heads granted before their orderSettleSeconds ended, because no pod not seen yet could be overtaken",
    ["pool"],
    namespace=_NS,
    registry=REGISTRY,
)
LEADER = Gauge("leader", "1 while this replica holds the leader lease", namespace=_NS, registry=REGISTRY)
CLOCK_OFFSET = Gauge(
    "clock_offset_seconds",
    "This replica's wall clock minus the API server's, as estimated from API answers (stamps are corrected by it)",
    namespace=_NS,
    registry=REGISTRY,
)
CLOCK_UNCERTAINTY = Gauge(
    "clock_offset_uncertainty_seconds",
    "Half the width of the offset estimate: how far a requested-at stamp can still be off",
    namespace=_NS,
    registry=REGISTRY,
)
FENCED_WRITES = Counter(
    "fenced_writes_total",
    "Controller writes not sent because this replica no longer surely led (a frozen or cut-off leader)",
    namespace=_NS,
    registry=REGISTRY,
)
CONTROLLER_UP = Gauge(
    "controller_up",
    "1 while this replica's queue controller runs, 0 while it restarts",
    namespace=_NS,
    registry=REGISTRY,
)
CONTROLLER_RESTARTS = Counter(
    "controller_restarts_total",
    "Times the queue controller failed with an unexpected error and was restarted",
    namespace=_NS,
    registry=REGISTRY,
)
RECONCILE_DURATION = Histogram(
    "reconcile_duration_seconds",
    "Time of one full reconcile of the store against the pods",
    namespace=_NS,
    registry=REGISTRY,
)
EVENTS = Counter("events_total", "Kubernetes Events written, by reason", ["reason"], namespace=_NS, registry=REGISTRY)
TLS_CERT_EXPIRY = Gauge(
    "tls_cert_expiry_timestamp_seconds",
    "notAfter of the serving certificate in use (alert when rotation stops: expiry - time() < 7d)",
    namespace=_NS,
    registry=REGISTRY,
)
TLS_RELOADS = Counter(
    "tls_reloads_total",
    "Serving certificate reloads from the mounted files, by result (ok, failed)",
    ["result"],
    namespace=_NS,
    registry=REGISTRY,
)
HISTORY_EVENTS = Counter(
    "history_events_total",
    "Queue history events by outcome: written, dropped (buffer full), lost (Redis did not answer)",
    ["outcome"],
    namespace=_NS,
    registry=REGISTRY,
)
