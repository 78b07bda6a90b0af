"""The API layer's Prometheus metrics (the engine's own are in engine/metrics.py)."""

from prometheus_client import Counter, Histogram

# --- The API layer ------------------------------------------------------------------------
# `endpoint` is one of ENDPOINTS (never a raw path); `reason` is an error code from the code.
ENDPOINTS = ("completions", "chat.completions", "ws", "responses", "other")
LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120)

API_COMPLETION_SECONDS = Histogram(
    "api_completion_seconds",
    "Admitted completions that finished, from request to last byte (never a refusal).",
    labelnames=("endpoint", "stream"),
    buckets=LATENCY_BUCKETS,
)
API_TIME_TO_FIRST_BYTE = Histogram(
    "api_time_to_first_byte_seconds",
    "Admitted completions, from request to the first content byte sent.",
    labelnames=("endpoint",),
    buckets=LATENCY_BUCKETS,
)
API_REJECTIONS = Counter(
    "api_rejections",
    "Requests answered with an error, by endpoint and error code (429s included).",
    labelnames=("endpoint", "reason"),
)


def endpoint_of(path: str) -> str:
    """The bounded endpoint label of an API path."""
    if path.endswith("/chat/completions"):
        return "chat.completions"
    if path.endswith("/v1/responses"):
        return "responses"
    if path.endswith("/completions"):
        return "completions" if path.startswith("/v1/") else "ws"
    return "other"


for _endpoint in ENDPOINTS[:-1]:
    API_TIME_TO_FIRST_BYTE.labels(_endpoint)
    for _stream in ("true", "false"):
        API_COMPLETION_SECONDS.labels(_endpoint, _stream)
