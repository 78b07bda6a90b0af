"""The real Prometheus on the project's scrape config and rules; promtool on both."""

import json
import subprocess
import time
import urllib.parse
from pathlib import Path

import pytest

from deploy.render import compose_values, render_tree
from tests.e2e.conftest import REPLICA_HOST, Stack, completion
from tests.e2e.dashboards import (
    all_expressions,
    dashboard_metric_names,
    exposed_names,
    with_variables,
)
from tests.e2e.servers import Server, http_get, require_binary, wait_until

# django_db: makes pytest-django create the test database the replicas use.
pytestmark = [pytest.mark.e2e, pytest.mark.django_db]


def promtool(*args: str, cwd: Path) -> str:
    result = subprocess.run(
        [require_binary("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def query(stack: Stack, expr: str) -> dict:
    url = f"{stack.prometheus}/api/v1/query?query={urllib.parse.quote(expr)}"
    status, body = http_get(url)
    answer = json.loads(body)
    assert status == 200 and answer["status"] == "success", (expr, answer)
    return answer["data"]


def test_promtool_accepts_the_config_and_rules_as_the_tests_render_them(stack: Stack) -> None:
    prometheus_dir = stack.config_dir / "prometheus"
    assert "SUCCESS" in promtool("check", "config", "prometheus.yml", cwd=prometheus_dir)
    # Every rule of the file (the unit tests and tests/e2e/test_alerting.py cover each one).
    assert "SUCCESS: 15 rules found" in promtool(
        "check", "rules", "rules/alerts.yml", cwd=prometheus_dir
    )


def test_promtool_accepts_the_config_as_compose_renders_it(tmp_path: Path) -> None:
    render_tree(tmp_path, compose_values(app_replicas=3))
    output = promtool("check", "config", "prometheus.yml", cwd=tmp_path / "prometheus")
    assert "is valid prometheus config file syntax" in output


def test_the_alert_rules_pass_their_unit_tests(stack: Stack) -> None:
    output = promtool("test", "rules", "tests/alerts.test.yml", cwd=stack.config_dir / "prometheus")
    assert "SUCCESS" in output


def targets_up(stack: Stack) -> dict[str, str]:
    status, body = http_get(f"{stack.prometheus}/api/v1/targets")
    active = json.loads(body)["data"]["activeTargets"]
    return {f"{t['labels']['job']}/{t['labels']['instance']}": t["health"] for t in active}


def test_prometheus_scrapes_every_replica_traefik_and_itself(
    stack: Stack, prometheus: Server
) -> None:
    expected = {f"app/{REPLICA_HOST}:{replica.port}" for replica in stack.replicas}
    expected |= {f"traefik/{stack.internal.removeprefix('http://')}"}
    expected |= {f"prometheus/{stack.prometheus.removeprefix('http://')}"}
    wait_until(
        lambda: all(targets_up(stack).get(target) == "up" for target in expected),
        f"Prometheus to report {sorted(expected)} up",
        timeout=120,
    )
    assert set(targets_up(stack)) == expected


def list_models_count(text: str) -> float:
    wanted = 'django_http_requests_total_by_view_transport_method_total{method="GET",'
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(wanted) and 'view="v1:list_models"' in line
    )


def test_prometheus_holds_the_app_metrics_of_every_replica_after_traffic(
    stack: Stack, prometheus: Server
) -> None:
    for _ in range(6):
        http_get(f"{stack.public}/v1/models")  # 401 without a key; counted all the same
    direct = sum(
        list_models_count(http_get(f"{replica.url}/metrics")[1].decode())
        for replica in stack.replicas
    )
    assert direct >= 6
    expr = (
        "sum(django_http_requests_total_by_view_transport_method_total"
        '{job="app",view="v1:list_models",method="GET"})'
    )

    def caught_up() -> bool:
        result = query(stack, expr)["result"]
        return bool(result) and float(result[0]["value"][1]) == direct

    wait_until(caught_up, "Prometheus to scrape both replicas after the traffic", timeout=120)
    traefik = 'traefik_entrypoint_requests_total{entrypoint="public",code="401"}'
    wait_until(lambda: bool(query(stack, traefik)["result"]), "Traefik's 401s in Prometheus")


def test_every_dashboard_query_is_valid_promql_on_the_real_prometheus(
    stack: Stack, prometheus: Server
) -> None:
    for expr in all_expressions():
        query(stack, with_variables(expr, tenant="acme"))  # a parse error answers 400


@pytest.fixture(scope="module")
def exposed_after_traffic(stack: Stack, api_token: str, limited_token: str) -> set[str]:
    """Every sample name one replica's /metrics shows after traffic through Traefik."""
    # Straight to the replica whose metrics are read: completions (plain and streamed), a 401,
    # and a 429; then some traffic through Traefik.
    replica, host = stack.replicas[0].url, "localhost"
    assert completion(replica, api_token, host)[0] == 200
    assert completion(replica, api_token, host, stream=True)[0] == 200
    assert completion(replica, "sk_not_a_key", host)[0] == 401
    statuses = {completion(replica, limited_token, host)[0] for _ in range(3)}
    assert 429 in statuses
    for _ in range(4):
        http_get(f"{stack.public}/v1/models", Authorization=f"Bearer {api_token}")
        http_get(f"{stack.public}/healthz")
    time.sleep(0.2)
    return exposed_names(http_get(f"{stack.replicas[0].url}/metrics")[1].decode())


@pytest.mark.parametrize("name", dashboard_metric_names())
def test_every_dashboard_metric_exists_in_the_app_metrics(
    name: str, exposed_after_traffic: set[str]
) -> None:
    assert name in exposed_after_traffic
