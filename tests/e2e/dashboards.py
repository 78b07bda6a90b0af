"""Reading the provisioned Grafana dashboards: their queries and the metric names they use."""

import json
import re
from pathlib import Path

from tests.e2e.servers import REPO

DASHBOARDS = sorted((REPO / "deploy" / "grafana" / "dashboards").glob("*.json"))
# Series Prometheus makes itself while scraping; every other name must come from the app.
SYNTHESIZED = {"up"}
# The names agreed in the brief for the parts built on other branches.
AGREED = {
    "ratelimit_decisions_total",
    "ratelimit_throttled_total",
    "ratelimit_backend_errors_total",
    "ratelimit_fail_open_total",
    "ratelimit_noscript_reloads_total",
    "ratelimit_admission_seconds",
    "ratelimit_circuit_open",
    "inference_queue_depth",
    "inference_batch_size",
    "inference_time_to_first_token_seconds",
    "inference_generation_seconds",
    "inference_tokens_generated_total",
    "inference_prompt_tokens_total",
    "inference_requests_total",
    "inference_model_load_seconds",
    "inference_model_ready",
    "inference_cuda_memory_bytes",
    "api_completion_seconds",
    "api_rejections_total",
    "api_time_to_first_byte_seconds",
    # The alert rules' (deploy/prometheus/rules/alerts.yml).
    "ratelimit_flushes_total",
    "auth_key_load_failures_total",
    "auth_key_lookups_unavailable_total",
}
GRAFANA_VARIABLES = {"$__rate_interval": "30s", "$__range": "5m", "$__interval": "5s"}
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or"}
KEYWORDS |= {"unless", "offset"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def panels(board: dict) -> list[dict]:
    return [panel for panel in board["panels"] if panel.get("type") != "row"]


def targets(board: dict, datasource_type: str) -> list[dict]:
    return [
        target
        for panel in panels(board)
        for target in panel["targets"]
        if target["datasource"]["type"] == datasource_type
    ]


def expressions(board: dict) -> list[str]:
    """The PromQL of every Prometheus query."""
    return [target["expr"] for target in targets(board, "prometheus")]


def sql_queries(board: dict) -> list[str]:
    """The SQL of every query on the usage (PostgreSQL) datasource."""
    return [target["rawSql"] for target in targets(board, "grafana-postgresql-datasource")]


def all_expressions() -> list[str]:
    return [expr for path in DASHBOARDS for expr in expressions(load(path))]


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression selects (functions, labels and keywords left out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w$.])([A-Za-z_:][\w:]*)\s*(\(?)", text):
        name, call = match.groups()
        if not call and name not in KEYWORDS:
            names.add(name)
    return names


def base_name(name: str) -> str:
    """A histogram's family name for its _bucket/_sum/_count series."""
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and not name.endswith("_total"):
            return name.removesuffix(suffix)
    return name


def dashboard_metric_names() -> list[str]:
    names = {name for expr in all_expressions() for name in metric_names(expr)}
    return sorted(names - SYNTHESIZED)


def with_variables(expr: str, tenant: str) -> str:
    for variable, value in {**GRAFANA_VARIABLES, "$tenant": tenant}.items():
        expr = expr.replace(variable, value)
    return expr


def exposed_names(exposition: str) -> set[str]:
    """Every sample name in a Prometheus text exposition."""
    return {
        re.split(r"[{ ]", line, maxsplit=1)[0]
        for line in exposition.splitlines()
        if line and not line.startswith("#")
    }
