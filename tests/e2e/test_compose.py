"""deploy/compose*.yaml against the Compose Specification's schema, and what they publish."""

import json
import re
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from deploy.render import COMPOSE_PROJECT, compose_values
from tests.e2e.servers import REPO, require_binary

pytestmark = pytest.mark.e2e

DEPLOY = REPO / "deploy"
COMPOSE_FILES = ["compose.yaml", "compose.gpu.yaml", "compose.ops.yaml"]
SCHEMA = json.loads((Path(__file__).parent / "schemas" / "compose-spec.json").read_text())
VALIDATOR = jsonschema.Draft7Validator(SCHEMA)  # the draft its $schema names
VARIABLE = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(?:(:?[-?])([^}]*))?\}")
SECRETS = {"POSTGRES_PASSWORD", "REDIS_PASSWORD", "GRAFANA_ADMIN_PASSWORD"}
SECRETS |= {"CLOUDFLARE_TUNNEL_TOKEN", "GRAFANA_DB_PASSWORD"}
SECRETS |= {"ALERT_WEBHOOK_URL", "ALERT_SMTP_PASSWORD"}


def raw(name: str) -> dict:
    return yaml.safe_load((DEPLOY / name).read_text())


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error} (and $$), enough for these files."""

    def value(match: re.Match[str]) -> str:
        name, op, arg = match.groups()
        current = env.get(name, "")
        if op and op.endswith("?") and not current:
            raise KeyError(f"{name} is required: {arg}")
        return current or (arg if op and op.endswith("-") else "")

    return VARIABLE.sub(value, text).replace("$$", "$")


def example_env() -> dict[str, str]:
    """deploy/.env.example with the empty secrets filled in, as an operator would."""
    env = {}
    for line in (DEPLOY / ".env.example").read_text().splitlines():
        if line and not line.startswith("#") and "=" in line:
            name, _, value = line.partition("=")
            env[name] = value
    return {**env, **{name: f"test-{name.lower()}" for name in SECRETS}}


def effective(name: str) -> dict:
    return yaml.safe_load(interpolate((DEPLOY / name).read_text(), example_env()))


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_the_compose_files_follow_the_compose_specification(name: str) -> None:
    VALIDATOR.validate(raw(name))
    VALIDATOR.validate(effective(name))


def test_the_schema_refuses_what_compose_would_refuse() -> None:
    compose = effective("compose.yaml")
    compose["services"]["app"]["publish"] = ["8000:8000"]  # not a Compose key
    with pytest.raises(jsonschema.ValidationError, match="publish"):
        VALIDATOR.validate(compose)


def test_only_traefiks_public_entrypoint_is_published() -> None:
    services = effective("compose.yaml")["services"]
    published = {name: svc["ports"] for name, svc in services.items() if svc.get("ports")}
    assert published == {"traefik": ["127.0.0.1:8080:8080"]}
    assert not any(svc.get("network_mode") == "host" for svc in services.values())
    public = compose_values(app_replicas=2)["TRAEFIK_PUBLIC_ADDRESS"]
    assert public == ":8080"  # the container port published above


def test_postgres_and_redis_publish_nothing_and_sit_on_the_internal_network_only() -> None:
    compose = effective("compose.yaml")
    for name in ("postgres", "redis"):
        service = compose["services"][name]
        assert "ports" not in service and "expose" not in service
    assert compose["services"]["redis"]["networks"] == ["backend"]
    # Postgres is also on `reporting`, shared only with Grafana and its grant job.
    assert compose["services"]["postgres"]["networks"] == ["backend", "reporting"]
    on_reporting = {
        name for name, svc in compose["services"].items() if "reporting" in svc.get("networks", [])
    }
    assert on_reporting == {"postgres", "grafana", "grafana-db-grant"}
    for network in ("backend", "metrics", "reporting"):
        assert compose["networks"][network]["internal"] is True


def test_the_operator_override_publishes_grafana_and_alertmanager_on_loopback_only() -> None:
    services = effective("compose.ops.yaml")["services"]
    assert {name for name, svc in services.items() if svc.get("ports")} == {
        "grafana",
        "alertmanager",
    }
    assert services["grafana"]["ports"] == ["127.0.0.1:3000:3000"]
    assert services["alertmanager"]["ports"] == ["127.0.0.1:9093:9093"]


def referenced(compose: dict, key: str) -> set[str]:
    names: set[str] = set()
    for service in compose["services"].values():
        value = service.get(key) or {}
        names |= set(value) if isinstance(value, dict | list) else set()
    return names


def test_every_service_network_and_volume_referenced_exists() -> None:
    base = effective("compose.yaml")
    services = set(base["services"])
    networks, volumes = set(base["networks"]), set(base["volumes"])
    for name in COMPOSE_FILES:
        compose = effective(name)
        networks |= set(compose.get("networks", {}))
        assert referenced(compose, "depends_on") <= services, name
        assert referenced(compose, "networks") <= networks, name
        assert set(compose["services"]) <= services, name
        for service in compose["services"].values():
            for mount in service.get("volumes", []):
                source = mount.split(":", 1)[0]
                if source.startswith("."):
                    assert (DEPLOY / source).exists(), source
                else:
                    assert source in volumes, source
            for env_file in [service["env_file"]] if "env_file" in service else []:
                assert (DEPLOY / f"{env_file}.example").exists()


def test_secrets_come_from_the_environment_and_are_never_committed() -> None:
    text = (DEPLOY / "compose.yaml").read_text()
    used = {match.group(1) for match in VARIABLE.finditer(text)}
    assert used >= SECRETS
    for line in (DEPLOY / ".env.example").read_text().splitlines():
        name, _, value = line.partition("=")
        if name in SECRETS | {"SECRET_KEY", "API_KEY_PEPPER"}:
            assert value == "", f"{name} must be empty in .env.example"
    for name in SECRETS:
        # Everywhere a secret is used it is ${NAME...}: no literal value anywhere.
        assert re.search(rf"{name}: [^$\s]", text) is None


def test_every_variable_compose_reads_is_documented_in_env_example() -> None:
    documented = set(example_env())
    for name in COMPOSE_FILES:
        used = {m.group(1) for m in VARIABLE.finditer((DEPLOY / name).read_text())}
        assert used <= documented, (name, used - documented)


def test_redis_has_a_password_and_never_evicts() -> None:
    redis = effective("compose.yaml")["services"]["redis"]
    command = " ".join(redis["command"])
    assert "--maxmemory-policy noeviction" in command and "requirepass" in command
    assert redis["environment"]["REDIS_PASSWORD"] == "test-redis_password"
    app_env = effective("compose.yaml")["services"]["app"]["environment"]
    assert app_env["REDIS_URL"] == "redis://:test-redis_password@redis:6379/0"


def test_grafana_wants_a_password_and_lets_nobody_in_anonymously() -> None:
    environment = effective("compose.yaml")["services"]["grafana"]["environment"]
    assert environment["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert environment["GF_SECURITY_ADMIN_PASSWORD"] == "test-grafana_admin_password"
    with pytest.raises(KeyError, match="GRAFANA_ADMIN_PASSWORD"):
        env = {k: v for k, v in example_env().items() if k != "GRAFANA_ADMIN_PASSWORD"}
        interpolate((DEPLOY / "compose.yaml").read_text(), env)


def test_the_tunnel_runs_over_http2_with_the_token_from_the_environment() -> None:
    cloudflared = effective("compose.yaml")["services"]["cloudflared"]
    assert cloudflared["profiles"] == ["tunnel"]
    command = cloudflared["command"]
    assert command[0] == "tunnel" and command[-1] == "run"
    assert command[command.index("--protocol") + 1] == "http2"
    assert cloudflared["environment"]["TUNNEL_TOKEN"] == "test-cloudflare_tunnel_token"
    ingress = yaml.safe_load((DEPLOY / "cloudflared" / "config.yml").read_text())["ingress"]
    assert [rule["service"] for rule in ingress] == ["http://traefik:8080"]


def test_the_addresses_the_app_and_traefik_trust_are_the_proxies_addresses() -> None:
    compose = effective("compose.yaml")
    traefik = compose["services"]["traefik"]["networks"]
    cloudflared = compose["services"]["cloudflared"]["networks"]["edge"]["ipv4_address"]
    trusted = compose["services"]["app"]["environment"]["TRUSTED_PROXY_ADDRESSES"].split(",")
    assert set(trusted) == {traefik["backend"]["ipv4_address"], cloudflared}
    values = compose_values(app_replicas=2)
    assert values["TRAEFIK_TRUSTED_FORWARDERS"] == [cloudflared]
    internal_ip = values["TRAEFIK_INTERNAL_ADDRESS"].rsplit(":", 1)[0]
    assert internal_ip == traefik["metrics"]["ipv4_address"]


def test_traefik_gets_one_server_per_replica_by_container_name() -> None:
    compose = effective("compose.yaml")
    assert compose["name"] == COMPOSE_PROJECT
    replicas = int(compose["services"]["app"]["deploy"]["replicas"])
    assert replicas >= 2
    servers = compose_values(app_replicas=replicas)["APP_SERVERS"]
    expected = [f"http://{COMPOSE_PROJECT}-app-{n}:8000" for n in range(1, replicas + 1)]
    assert [server["url"] for server in servers] == expected
    render = compose["services"]["config"]["command"]
    assert render[render.index("--app-replicas") + 1] == str(replicas)


def test_the_app_is_health_checked_on_readyz_and_the_gpu_variant_reserves_a_gpu() -> None:
    app = effective("compose.yaml")["services"]["app"]
    check = " ".join(app["healthcheck"]["test"])
    assert "/readyz" in check
    # Django refuses hosts it does not list (400): the checks send one it always lists.
    assert "localhost" in app["environment"]["ALLOWED_HOSTS"].split(",")
    assert "'Host': 'localhost'" in check
    dynamic = yaml.safe_load(
        (DEPLOY / "traefik" / "dynamic" / "app.yml").read_text().replace("${APP_SERVERS}", "[]")
    )
    assert dynamic["http"]["services"]["app"]["loadBalancer"]["healthCheck"]["hostname"] == (
        "localhost"
    )
    gpu = effective("compose.gpu.yaml")["services"]["app"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert gpu["build"]["args"]["TORCH_VARIANT"].startswith("cu")


def dockerfile_lines() -> list[str]:
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip() and line[0] != "#"]


def test_the_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [require_binary("hadolint"), str(DEPLOY / "Dockerfile")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_is_multi_stage_non_root_with_a_model_volume_and_offline_mode() -> None:
    lines = dockerfile_lines()
    stages = [line for line in lines if line.startswith("FROM ")]
    assert len(stages) >= 2 and "COPY --from=build" in " ".join(lines)
    final = lines[lines.index(stages[-1]) :]
    user = next(line for line in reversed(final) if line.startswith("USER "))
    assert user not in ("USER root", "USER 0")
    text = " ".join(lines)
    assert "ARG TORCH_VARIANT=cpu" in text and "ARG TORCH_VERSION=2.13.0" in text
    assert "download.pytorch.org/whl/${TORCH_VARIANT}" in text
    assert 'VOLUME ["/models"]' in text and "HF_HOME=/models/hf" in text
    assert "HF_HUB_OFFLINE" in text


def test_a_replica_may_finish_its_drain_before_docker_kills_it() -> None:
    from django.conf import settings

    app = effective("compose.yaml")["services"]["app"]
    grace = app["stop_grace_period"]
    assert grace.endswith("s") and int(grace[:-1]) > settings.INFERENCE_DRAIN_SECONDS
    check = app["healthcheck"]
    # Slow is not dead: several misses in a row, each with seconds to answer.
    assert check["retries"] >= 3 and int(str(check["timeout"]).rstrip("s")) >= 5
