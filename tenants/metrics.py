"""Authentication's Prometheus metrics (no labels: never a key or an address)."""

from prometheus_client import Counter

stale_key_records = Counter(
    "auth_stale_key_records_total",
    "Requests authenticated from a key record past its cache TTL because Postgres could not "
    "answer (stale-if-error).",
)
key_lookups_unavailable = Counter(
    "auth_key_lookups_unavailable_total",
    "Requests answered 503 because their key was not cached and Postgres could not answer.",
)
key_load_failures = Counter(
    "auth_key_load_failures_total",
    "Key record loads from Postgres that failed or timed out (API_KEY_LOAD_TIMEOUT_SECONDS).",
)
