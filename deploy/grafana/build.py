#!/usr/bin/env python3
"""Writes deploy/grafana/dashboards/*.json, the dashboards Grafana provisions.

Edit the panels here and run `python deploy/grafana/build.py`; tests/e2e/test_dashboards.py
fails when the JSON files and this script disagree. Metric names are the agreed ones (brief):
never a raw path or key as a label, admitted-completion latency apart from rejections.
"""

import json
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "dashboards"
PROMETHEUS = {"type": "prometheus", "uid": "prometheus"}
USAGE = {"type": "grafana-postgresql-datasource", "uid": "usage"}
RATE = "$__rate_interval"
Panel = dict[str, Any]


def panel(
    pid: int, title: str, queries: list[tuple[str, str]], at: tuple[int, int], **kw: Any
) -> Panel:
    """A Prometheus panel: queries are (PromQL, legend) pairs."""
    kind = kw.get("kind", "timeseries")
    legend = {"displayMode": "list", "placement": "bottom", "showLegend": True}
    return {
        **_frame(pid, title, at, PROMETHEUS, kind, kw),
        "options": {"legend": legend} if kind == "timeseries" else {},
        "targets": [
            {"refId": chr(65 + i), "datasource": PROMETHEUS, "expr": expr, "legendFormat": label}
            for i, (expr, label) in enumerate(queries)
        ],
    }


def sql_panel(pid: int, title: str, queries: list[str], at: tuple[int, int], **kw: Any) -> Panel:
    """A panel on the usage tables (read-only role; deploy/postgres/grafana-reader.sql)."""
    fmt = kw.get("fmt", "time_series")
    return {
        **_frame(pid, title, at, USAGE, kw.get("kind", "timeseries"), kw),
        "options": {},
        "targets": [
            {
                "refId": chr(65 + i),
                "datasource": USAGE,
                "rawSql": sql,
                "rawQuery": True,
                "editorMode": "code",
                "format": fmt,
            }
            for i, sql in enumerate(queries)
        ],
    }


def _frame(pid: int, title: str, at: tuple[int, int], source: dict, kind: str, kw: dict) -> Panel:
    return {
        "id": pid,
        "type": kind,
        "title": title,
        "description": kw.get("desc", ""),
        "datasource": source,
        "gridPos": {"x": at[0], "y": at[1], "w": 12, "h": 8},
        "fieldConfig": {"defaults": {"unit": kw.get("unit", "short")}, "overrides": []},
    }


def quantile(q: float, metric: str) -> str:
    return f"histogram_quantile({q}, sum by (le) (rate({metric}_bucket[{RATE}])))"


def dashboard(
    uid: str, title: str, panels: list[Panel], desc: str, variables: list | None = None
) -> dict:
    return {
        "uid": uid,
        "title": title,
        "description": desc,
        "tags": ["inference-node"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": variables or []},
        "annotations": {"list": []},
        "panels": panels,
    }


STATUS_CLASS = (
    f"sum by (class) (label_replace(rate(django_http_responses_total_by_status_total[{RATE}]),"
    ' "class", "${1}xx", "status", "([1-5]).."))'
)
LATENCY_NOTE = (
    "api_completion_seconds holds admitted completions only; 429s and other rejections are in "
    "api_rejections_total and never in this histogram."
)


OVERVIEW_PANELS = [
    panel(
        1,
        "Requests by status class",
        [(STATUS_CLASS, "{{class}}")],
        (0, 0),
        unit="reqps",
        desc="Every HTTP response of every replica, by 2xx/3xx/4xx/5xx.",
    ),
    panel(
        2,
        "Completion latency, admitted requests (p50 / p95 / p99)",
        [(quantile(q, "api_completion_seconds"), f"p{round(q * 100)}") for q in (0.5, 0.95, 0.99)],
        (12, 0),
        unit="s",
        desc=LATENCY_NOTE,
    ),
    panel(
        3,
        "Time to first token (p50 / p95)",
        [
            (quantile(0.5, "inference_time_to_first_token_seconds"), "p50"),
            (quantile(0.95, "inference_time_to_first_token_seconds"), "p95"),
            (quantile(0.95, "api_time_to_first_byte_seconds"), "first byte to client p95"),
        ],
        (0, 8),
        unit="s",
    ),
    panel(
        4,
        "Tokens per second",
        [
            (f"sum(rate(inference_tokens_generated_total[{RATE}]))", "generated"),
            (f"sum(rate(inference_prompt_tokens_total[{RATE}]))", "prompt"),
        ],
        (12, 8),
    ),
    panel(
        5,
        "Queue depth by replica",
        [("sum by (instance) (inference_queue_depth)", "{{instance}}")],
        (0, 16),
        desc="Requests waiting for the model; at INFERENCE_MAX_QUEUE new ones get 503.",
    ),
    panel(
        6,
        "Batch size (p50 / mean / max bucket p99)",
        [
            (quantile(0.5, "inference_batch_size"), "p50"),
            (
                f"sum(rate(inference_batch_size_sum[{RATE}]))"
                f" / sum(rate(inference_batch_size_count[{RATE}]))",
                "mean",
            ),
            (quantile(0.99, "inference_batch_size"), "p99"),
        ],
        (12, 16),
    ),
    panel(
        7,
        "Rejections by reason",
        [(f"sum by (reason) (rate(api_rejections_total[{RATE}]))", "{{reason}}")],
        (0, 24),
        unit="reqps",
    ),
    panel(
        8,
        "Inference requests by result",
        [(f"sum by (result) (rate(inference_requests_total[{RATE}]))", "{{result}}")],
        (12, 24),
        unit="reqps",
    ),
    panel(
        9,
        "Replicas: scraped and model ready",
        [
            ('sum(up{job="app"})', "answering /metrics"),
            ("sum(inference_model_ready)", "model ready"),
        ],
        (0, 32),
    ),
    panel(
        10,
        "Database queries (rate, p95)",
        [
            (f"sum(rate(django_db_execute_total[{RATE}]))", "queries/s"),
            (quantile(0.95, "django_db_query_duration_seconds"), "p95 seconds"),
        ],
        (12, 32),
    ),
]
OVERVIEW = dashboard(
    "inference-overview",
    "Inference node: overview",
    OVERVIEW_PANELS,
    "Requests, admitted-completion latency, time to first token, throughput, queue and batches.",
)


DENIED = '{result=~"denied|local_denied"}'
FAIL_OPEN_NOTE = (
    "Each one is a request admitted while Redis could not answer (RATELIMIT_FAILURE_MODE=open). "
    "The RateLimiterFailingOpen alert fires on any."
)


RATELIMIT_PANELS = [
    panel(
        1,
        "Decisions by result",
        [(f"sum by (result) (rate(ratelimit_decisions_total[{RATE}]))", "{{result}}")],
        (0, 0),
        unit="reqps",
    ),
    panel(
        2,
        "Denials by binding limit",
        [(f"sum by (limit) (rate(ratelimit_decisions_total{DENIED}[{RATE}]))", "{{limit}}")],
        (12, 0),
        unit="reqps",
    ),
    panel(
        3,
        "Most throttled tenants (429s in range)",
        [
            (
                "topk(10, sum by (tenant) (increase(ratelimit_throttled_total[$__range])))",
                "{{tenant}}",
            )
        ],
        (0, 8),
        kind="bargauge",
    ),
    panel(
        4,
        "Fail-opens (admitted without Redis)",
        [
            (f"sum(increase(ratelimit_fail_open_total[{RATE}]))", "fail-opens"),
            (
                f'sum(rate(ratelimit_decisions_total{{result="failed_open"}}[{RATE}]))',
                "failed_open decisions/s",
            ),
        ],
        (12, 8),
        desc=FAIL_OPEN_NOTE,
    ),
    panel(
        5,
        "Redis errors by operation",
        [
            (
                f"sum by (operation) (rate(ratelimit_backend_errors_total[{RATE}]))",
                "{{operation}}",
            )
        ],
        (0, 16),
        unit="reqps",
    ),
    panel(
        6,
        "Circuit breaker open (replicas)",
        [("sum(ratelimit_circuit_open)", "open")],
        (12, 16),
    ),
    panel(
        7,
        "Admission latency (p50 / p99)",
        [
            (quantile(0.5, "ratelimit_admission_seconds"), "p50"),
            (quantile(0.99, "ratelimit_admission_seconds"), "p99"),
        ],
        (0, 24),
        unit="s",
    ),
    panel(
        8,
        "Script reloads after NOSCRIPT",
        [(f"sum(increase(ratelimit_noscript_reloads_total[{RATE}]))", "reloads")],
        (12, 24),
    ),
]
RATELIMIT = dashboard(
    "inference-ratelimit",
    "Inference node: rate limiting",
    RATELIMIT_PANELS,
    "The limiter's decisions, who is throttled, and every fail-open.",
)


TENANT_USAGE = (
    "FROM tenants_usageminute u JOIN tenants_tenant t ON t.id = u.tenant_id "
    "WHERE t.slug = '$tenant' AND $__timeFilter(u.minute)"
)
TENANT_THROTTLES = (
    "FROM tenants_throttleevent e JOIN tenants_tenant t ON t.id = e.tenant_id "
    "WHERE t.slug = '$tenant' AND $__timeFilter(e.minute)"
)
TENANTS = "SELECT slug FROM tenants_tenant ORDER BY slug"
TENANT_RATE = f'sum(rate(ratelimit_throttled_total{{tenant="$tenant"}}[{RATE}]))'


TENANT_VARIABLE = {
    "name": "tenant",
    "label": "Tenant",
    "type": "query",
    "datasource": USAGE,
    "query": TENANTS,
    "definition": TENANTS,
    "refresh": 1,
    "includeAll": False,
    "multi": False,
    "sort": 1,
    "current": {},
}
TENANT_PANELS = [
    sql_panel(
        1,
        "Requests per minute",
        [
            f'SELECT u.minute AS "time", SUM(u.requests) AS "requests", '
            f'SUM(u.errors) AS "errors" {TENANT_USAGE} GROUP BY 1 ORDER BY 1'
        ],
        (0, 0),
        desc="Accepted requests, counted exactly once (from the usage table the limiter "
        "settles into), and requests answered with an error other than 401 or 429.",
    ),
    sql_panel(
        2,
        "Tokens per minute",
        [
            'SELECT u.minute AS "time", SUM(u.prompt_tokens) AS "prompt", '
            'SUM(u.completion_tokens) AS "completion" '
            f"{TENANT_USAGE} GROUP BY 1 ORDER BY 1"
        ],
        (12, 0),
    ),
    sql_panel(
        3,
        "429s per minute by reason",
        [
            'SELECT e.minute AS "time", e.reason AS "metric", SUM(e.count) AS "value" '
            f"{TENANT_THROTTLES} "
            "GROUP BY 1, 2 ORDER BY 1"
        ],
        (0, 8),
    ),
    sql_panel(
        4,
        "Tokens in the selected range",
        [
            "SELECT COALESCE(SUM(u.prompt_tokens + u.completion_tokens), 0) AS "
            f'"tokens" {TENANT_USAGE}'
        ],
        (12, 8),
        kind="stat",
        fmt="table",
    ),
    panel(
        5,
        "429s right now (all replicas)",
        [(TENANT_RATE, "$tenant")],
        (0, 16),
        unit="reqps",
        desc="Live from the replicas' metrics; the table above catches up when the audit "
        "buffer is flushed.",
    ),
    panel(
        6,
        "Share of all 429s",
        [(f"{TENANT_RATE} / sum(rate(ratelimit_throttled_total[{RATE}]))", "$tenant")],
        (12, 16),
        unit="percentunit",
    ),
]
TENANT = dashboard(
    "inference-tenant",
    "Inference node: per tenant",
    TENANT_PANELS,
    "One tenant: its billed usage (Postgres, read-only role) and its throttling (Prometheus). "
    "Labels carry the tenant slug only, never a key.",
    [TENANT_VARIABLE],
)


def render() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    boards = {"overview": OVERVIEW, "ratelimit": RATELIMIT, "tenant": TENANT}
    return {f"{name}.json": json.dumps(board, indent=2) + "\n" for name, board in boards.items()}


if __name__ == "__main__":
    for name, text in render().items():
        (OUT / name).write_text(text)
        print(f"wrote {OUT / name}")
