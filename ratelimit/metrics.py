"""The limiter's Prometheus metrics. Labels are bounded: a decision result, a limit name from
a fixed list, an operation, or a tenant slug; never a key, a path or an address."""

from prometheus_client import Counter, Gauge, Histogram

RESULTS = (
    "allowed",
    "denied",
    "cached_denied",  # refused in process, Redis having refused the same key moments before
    "failed_open",
    "failed_closed",
    "local_allowed",
    "local_denied",
)

decisions = Counter(
    "ratelimit_decisions_total",
    "Admission decisions by result and binding limit (none when nothing bound).",
    ["result", "limit"],
)
throttled = Counter(
    "ratelimit_throttled_total", "Requests refused with 429, by tenant.", ["tenant"]
)
backend_errors = Counter(
    "ratelimit_backend_errors_total",
    "Redis errors and timeouts met by the limiter, by operation.",
    ["operation"],
)
fail_open = Counter(
    "ratelimit_fail_open_total", "Requests admitted unchecked because Redis could not answer."
)
noscript_reloads = Counter(
    "ratelimit_noscript_reloads_total",
    "Scripts loaded again after NOSCRIPT (Redis restart, failover or SCRIPT FLUSH).",
)
admission_seconds = Histogram(
    "ratelimit_admission_seconds",
    "Time of one ADMIT round trip to Redis, as seen by the caller.",
    buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
)
# The flusher thread's runs (ratelimit/flush.py): ok when every buffer reached Postgres. Its
# labels are made when the thread starts, so a process that runs no flusher shows no series
# (and the "not flushing" alert cannot fire for it).
flushes = Counter(
    "ratelimit_flushes_total", "Runs of the usage flusher, by outcome (ok or failed).", ["result"]
)
# Several daphne processes may share PROMETHEUS_MULTIPROC_DIR: report the worst live one.
circuit_open = Gauge(
    "ratelimit_circuit_open",
    "1 while this process's circuit breaker skips Redis, else 0.",
    multiprocess_mode="livemax",
)


# Every bounded label set starts at 0, so dashboards and alerts see the series before the first
# event (a counter that appears only after its first error reads as "no data", not 0).
OPERATIONS = ("admit", "settle", "count_usage", "heartbeat", "login", "count_error", "charge")
for _operation in OPERATIONS:
    backend_errors.labels(_operation)
for _result in RESULTS:
    decisions.labels(_result, "none")
