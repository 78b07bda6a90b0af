"""The Grafana dashboards: provisioned datasource, agreed metric names, separate latency."""

import pytest
import yaml

from tests.e2e.dashboards import (
    AGREED,
    DASHBOARDS,
    base_name,
    dashboard_metric_names,
    expressions,
    load,
    metric_names,
    panels,
    sql_queries,
)
from tests.e2e.servers import REPO

pytestmark = pytest.mark.e2e

PROVISIONING = REPO / "deploy" / "grafana" / "provisioning"


def test_the_metric_name_parser_finds_series_and_skips_functions_and_labels() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le) (rate(api_completion_seconds_bucket{stream="true"}'
        '[$__rate_interval]))) / on (instance) group_left sum(up{job="app"}) or vector(0)'
    )
    assert metric_names(expr) == {"api_completion_seconds_bucket", "up"}


def test_every_panel_uses_a_provisioned_datasource_of_its_type() -> None:
    config = yaml.safe_load((PROVISIONING / "datasources" / "datasources.yml").read_text())
    provisioned = {(source["uid"], source["type"]) for source in config["datasources"]}
    for path in DASHBOARDS:
        for panel in panels(load(path)):
            used = [panel["datasource"], *(target["datasource"] for target in panel["targets"])]
            for source in used:
                assert (source["uid"], source["type"]) in provisioned, (path.name, panel["title"])


def test_the_usage_datasource_reads_its_credentials_from_the_environment() -> None:
    config = yaml.safe_load((PROVISIONING / "datasources" / "datasources.yml").read_text())
    usage = next(source for source in config["datasources"] if source["uid"] == "usage")
    assert usage["user"] == "$GRAFANA_DB_USER"
    assert usage["secureJsonData"]["password"] == "$GRAFANA_DB_PASSWORD"


def test_the_three_dashboards_exist_with_unique_uids() -> None:
    uids = [load(path)["uid"] for path in DASHBOARDS]
    assert sorted(uids) == ["inference-overview", "inference-ratelimit", "inference-tenant"]
    provider = yaml.safe_load((PROVISIONING / "dashboards" / "inference-node.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


def test_completion_latency_is_never_mixed_with_rejections() -> None:
    overview = load(next(path for path in DASHBOARDS if path.stem == "overview"))
    latency = [panel for panel in panels(overview) if "Completion latency" in panel["title"]]
    assert len(latency) == 1
    exprs = [target["expr"] for target in latency[0]["targets"]]
    assert {"p50", "p95", "p99"} == {t["legendFormat"] for t in latency[0]["targets"]}
    assert all(metric_names(expr) == {"api_completion_seconds_bucket"} for expr in exprs)


def test_the_tenant_dashboard_filters_every_query_by_its_variable() -> None:
    board = load(next(path for path in DASHBOARDS if path.stem == "tenant"))
    variables = {item["name"]: item for item in board["templating"]["list"]}
    assert variables["tenant"]["query"] == "SELECT slug FROM tenants_tenant ORDER BY slug"
    assert expressions(board) and all('tenant="$tenant"' in expr for expr in expressions(board))
    queries = sql_queries(board)
    assert queries and all("t.slug = '$tenant'" in sql for sql in queries)


def test_dashboards_use_only_agreed_or_django_metric_names() -> None:
    for name in dashboard_metric_names():
        assert name.startswith("django_") or base_name(name) in AGREED, name


def test_the_rate_limit_dashboard_shows_decisions_tenants_and_fail_opens() -> None:
    board = load(next(path for path in DASHBOARDS if path.stem == "ratelimit"))
    names = {name for expr in expressions(board) for name in metric_names(expr)}
    assert {"ratelimit_decisions_total", "ratelimit_throttled_total"} <= names
    assert "ratelimit_fail_open_total" in names


def test_the_json_files_are_what_the_build_script_writes() -> None:
    from deploy.grafana.build import render

    written = {path.name: path.read_text() for path in DASHBOARDS}
    assert written == render(), "run `python deploy/grafana/build.py` after editing it"


def test_the_alert_rules_use_agreed_names_or_traefiks_own() -> None:
    rules = yaml.safe_load((REPO / "deploy" / "prometheus" / "rules" / "alerts.yml").read_text())
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    names = {name for e in exprs for name in metric_names(e.replace("${INFERENCE_MAX_QUEUE}", "9"))}
    external = ("traefik_", "alertmanager_")
    app_names = {name for name in names if not name.startswith(external) and name != "up"}
    assert app_names and {base_name(name) for name in app_names} <= AGREED
    # Traefik's and Alertmanager's names are checked against the real binaries
    # (test_prometheus.py, test_alerting.py).
    assert names - app_names == {
        "traefik_entrypoint_requests_total",
        "traefik_service_server_up",
        "alertmanager_notifications_failed_total",
        "up",
    }
