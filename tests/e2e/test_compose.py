"""deploy/compose*.yaml against the Compose Specification's schema, and what they publish."""

import configparser
import json
import re
import subprocess
import tomllib
from pathlib import Path
from urllib.parse import urlparse

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

SECRETS |= {"ALERT_WEBHOOK_URL", "ALERT_SMTP_PASSWORD"}
SECRETS |= {"CLOUDFLARE_TUNNEL_TOKEN", "GRAFANA_DB_PASSWORD", "APP_DB_PASSWORD"}
SECRETS |= {"SECRET_KEY", "API_KEY_PEPPER"}


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
    for name in ("postgres", "pgbouncer", "redis", "redis-limiter", "redis-cache"):
        service = compose["services"][name]
        assert "ports" not in service and "expose" not in service
        assert name == "postgres" or service["networks"] == ["backend"]
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
    drain = int(app["environment"]["INFERENCE_DRAIN_SECONDS"])
    assert (
        drain == int(example_env()["INFERENCE_DRAIN_SECONDS"]) == settings.INFERENCE_DRAIN_SECONDS
    )
    # `serve` kills a process still running 15 s past the drain; Docker must wait longer.
    assert grace.endswith("s") and int(grace[:-1]) > drain + 15
    check = app["healthcheck"]
    # Slow is not dead: several misses in a row, each with seconds to answer.
    assert check["retries"] >= 3 and int(str(check["timeout"]).rstrip("s")) >= 5


# --- PgBouncer, roles, backups (issue 18, item 4) --------------------------------------------


def url_parts(url: str) -> tuple[str, str, int, str]:
    parsed = urlparse(url)
    return parsed.username or "", parsed.hostname or "", parsed.port or 0, parsed.path[1:]


def pgbouncer_ini() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(delimiters=("=",), comment_prefixes=(";",))
    parser.read(DEPLOY / "pgbouncer" / "pgbouncer.ini")
    return parser


def test_the_app_reaches_postgres_through_pgbouncer_as_its_own_role() -> None:
    services = effective("compose.yaml")["services"]
    app, migrate = services["app"]["environment"], services["migrate"]["environment"]
    assert url_parts(app["DATABASE_URL"]) == ("node_app", "pgbouncer", 6432, "node")
    assert app["DATABASE_POOLER"] == "pgbouncer"
    # Migrations as the owner, straight to Postgres.
    assert url_parts(migrate["DATABASE_URL"]) == ("node", "postgres", 5432, "node")
    assert migrate["DATABASE_POOLER"] == "none"
    assert services["postgres"]["environment"]["POSTGRES_USER"] == "node"
    assert "test-app_db_password" in app["DATABASE_URL"]
    assert "test-postgres_password" not in json.dumps(app)
    # The role exists before PgBouncer serves it, and after every migrate.
    grant = services["app-db-grant"]
    assert grant["command"][-1] == "/sql/app-role.sql"
    assert "./postgres/app-role.sql:/sql/app-role.sql:ro" in grant["volumes"]
    assert grant["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    bouncer = services["pgbouncer"]
    assert bouncer["depends_on"]["app-db-grant"]["condition"] == "service_completed_successfully"
    assert "pgbouncer" in services["app"]["depends_on"]
    assert "./pgbouncer/pgbouncer.ini:/etc/pgbouncer/pgbouncer.ini:ro" in bouncer["volumes"]
    assert pgbouncer_ini()["pgbouncer"]["pool_mode"].strip() == "transaction"


def test_the_connection_budget_holds_at_ten_replicas() -> None:
    """docs/deploy.md's budget: clients into PgBouncer, PgBouncer's connections into Postgres."""
    env = example_env()
    ini = pgbouncer_ini()["pgbouncer"]
    per_replica = int(env["WEB_PROCESSES"]) * int(env["DATABASE_POOL_MAX"])
    assert int(ini["max_client_conn"]) >= 10 * per_replica * 2  # ten replicas, with room
    command = effective("compose.yaml")["services"]["postgres"]["command"]
    max_connections = int(command[command.index("-c") + 1].split("=")[1])
    # Postgres keeps 3 for superusers; the owner's jobs, Grafana and the backup need some.
    to_postgres = int(ini["max_db_connections"])
    assert to_postgres + 3 + 20 <= max_connections
    assert int(ini["default_pool_size"]) + int(ini["reserve_pool_size"]) <= to_postgres
    docs = (REPO / "docs" / "deploy.md").read_text()
    assert f"max_connections={max_connections}" in docs.replace("`", "")
    assert f"max_db_connections={to_postgres}" in docs.replace("`", "")


def test_backups_run_on_a_schedule_with_retention_into_their_own_volume() -> None:
    compose = effective("compose.yaml")
    backup = compose["services"]["backup"]
    assert backup["command"] == ["sh", "/scripts/backup.sh"]
    assert "backups:/backups" in backup["volumes"] and "backups" in compose["volumes"]
    assert "./postgres/restore.sh:/scripts/restore.sh:ro" in backup["volumes"]
    environment = backup["environment"]
    assert int(environment["BACKUP_INTERVAL_SECONDS"]) > 0
    assert int(environment["BACKUP_RETENTION_DAYS"]) > 0
    assert (environment["PGHOST"], environment["PGUSER"]) == ("postgres", "node")
    assert backup["restart"] == "unless-stopped"


# --- Compose loose ends (issue 18, item 5) ---------------------------------------------------

LONG_RUNNING = {name for name, svc in raw("compose.yaml")["services"].items()}
ONE_SHOTS = {"migrate", "config", "grafana-db-grant", "app-db-grant", "model-download"}
ONE_SHOTS |= {"tunnel-token-check"}


def test_every_long_running_service_has_cpu_and_memory_limits() -> None:
    services = effective("compose.yaml")["services"]
    for name in LONG_RUNNING - ONE_SHOTS:
        limits = services[name].get("deploy", {}).get("resources", {}).get("limits", {})
        assert limits.get("cpus") and limits.get("memory"), name
    app = services["app"]
    # torch's threads = the replica's CPUs (APP_CPUS, documented as cores / replicas).
    cpus = app["deploy"]["resources"]["limits"]["cpus"]
    assert app["environment"]["INFERENCE_THREADS"] == cpus == example_env()["APP_CPUS"]
    assert "APP_REPLICAS" in (DEPLOY / ".env.example").read_text().split("APP_CPUS=")[0][-400:]


def redis_command(service: dict) -> str:
    return " ".join(service["command"])


def redis_policy(service: dict) -> str:
    match = re.search(r"--maxmemory-policy (\S+)", redis_command(service))
    return match.group(1) if match else ""


def test_three_redis_with_maxmemory_the_limiter_never_evicts_the_cache_does() -> None:
    services = effective("compose.yaml")["services"]
    policies = {
        name: redis_policy(services[name]) for name in ("redis", "redis-limiter", "redis-cache")
    }
    assert policies == {
        "redis": "noeviction",
        "redis-limiter": "noeviction",
        "redis-cache": "allkeys-lru",
    }
    for name in policies:
        assert re.search(r"--maxmemory \d+mb", redis_command(services[name])), name
    app = services["app"]["environment"]
    hosts = {
        key: urlparse(app[key]).hostname
        for key in ("REDIS_URL", "RATELIMIT_REDIS_URL", "CACHE_REDIS_URL")
    }
    assert hosts == {
        "REDIS_URL": "redis",
        "RATELIMIT_REDIS_URL": "redis-limiter",
        "CACHE_REDIS_URL": "redis-cache",
    }


def test_the_cache_setting_defaults_to_redis_url_and_takes_its_own() -> None:
    import subprocess as sp
    import sys

    code = "from django.conf import settings as s; print(s.CACHES['default']['LOCATION'])"
    env = {"DJANGO_SETTINGS_MODULE": "console.settings", "REDIS_URL": "redis://a:6379/0"}
    for extra, expected in (
        ({}, "redis://a:6379/0"),
        ({"CACHE_REDIS_URL": "redis://c/1"}, "redis://c/1"),
    ):
        result = sp.run(
            [sys.executable, "-c", f"import django; django.setup(); {code}"],
            cwd=REPO,
            env={"PATH": "/usr/bin:/bin", **env, **extra},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.stdout.strip() == expected, result.stderr[-2000:]


COMPOSE_ONLY_SECRETS = {
    "CLOUDFLARE_TUNNEL_TOKEN",
    "GRAFANA_ADMIN_PASSWORD",
    "GRAFANA_DB_PASSWORD",
    "POSTGRES_PASSWORD",
}


def app_settings_in_env_example() -> set[str]:
    """The variables .env.example documents for the app (all but the compose-only section)."""
    names, compose_only = set(), False
    for line in (DEPLOY / ".env.example").read_text().splitlines():
        if line.startswith("# --- "):
            compose_only = line.startswith("# --- compose.yaml only")
        elif line and line[0] != "#" and "=" in line and not compose_only:
            names.add(line.split("=", 1)[0])
    return names


def test_the_app_sees_only_its_own_environment() -> None:
    compose = effective("compose.yaml")
    assert not any("env_file" in svc for svc in compose["services"].values())
    for name in ("app", "migrate"):
        environment = compose["services"][name]["environment"]
        assert not set(environment) & (
            COMPOSE_ONLY_SECRETS | {"TUNNEL_TOKEN", "GF_SECURITY_ADMIN_PASSWORD"}
        )
        leaked = {
            s
            for s in COMPOSE_ONLY_SECRETS - {"POSTGRES_PASSWORD"}
            if f"test-{s.lower()}" in json.dumps(environment)
        }
        assert not leaked, (name, leaked)
    app = compose["services"]["app"]["environment"]
    assert "test-postgres_password" not in json.dumps(app)
    # Every setting .env.example documents for the app reaches it (named one by one), but
    # those the image itself sets (paths inside it: the static files, the metrics directory).
    image_env = set(re.findall(r"\b([A-Z_]+)=", " ".join(dockerfile_lines()).split("ENV ", 1)[1]))
    missing = app_settings_in_env_example() - set(app) - image_env
    assert not missing, f"add to x-app-settings in deploy/compose.yaml: {sorted(missing)}"
    assert app["SECRET_KEY"] == "test-secret_key"


def run_check(command: list[str], token: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 (the compose file's own shell check)
        command,
        env={"PATH": "/usr/bin:/bin", "TUNNEL_TOKEN": token},
        capture_output=True,
        text=True,
    )


def test_the_tunnel_profile_refuses_to_start_without_its_token() -> None:
    services = effective("compose.yaml")["services"]
    check = services["tunnel-token-check"]
    assert check["profiles"] == ["tunnel"] == services["cloudflared"]["profiles"]
    condition = services["cloudflared"]["depends_on"]["tunnel-token-check"]["condition"]
    assert condition == "service_completed_successfully"
    assert check["environment"]["TUNNEL_TOKEN"] == "test-cloudflare_tunnel_token"
    refused = run_check(check["command"], "")
    assert refused.returncode == 1 and "CLOUDFLARE_TUNNEL_TOKEN" in refused.stderr
    assert run_check(check["command"], "a-token").returncode == 0
    # Without the tunnel profile nothing needs the token: compose interpolates every service.
    env = {k: v for k, v in example_env().items() if k != "CLOUDFLARE_TUNNEL_TOKEN"}
    interpolate((DEPLOY / "compose.yaml").read_text(), env)


def test_one_variable_builds_every_service_that_runs_the_image_for_the_gpu() -> None:
    text = (DEPLOY / "compose.yaml").read_text()
    compose = yaml.safe_load(interpolate(text, {**example_env(), "TORCH_VARIANT": "cu126"}))
    built = {name: svc for name, svc in compose["services"].items() if "build" in svc}
    assert set(built) == {"migrate", "config", "model-download", "app"}
    for name, service in built.items():
        assert service["image"] == "inference-node:cu126", name
        assert service["build"]["args"]["TORCH_VARIANT"] == "cu126", name
    for service in raw("compose.gpu.yaml")["services"].values():
        assert "image" not in service and "build" not in service


DIGEST = re.compile(r"^[a-z0-9./-]+:[\w.-]+@sha256:[0-9a-f]{64}$")


def test_every_pulled_image_is_pinned_by_digest_and_current() -> None:
    services = effective("compose.yaml")["services"]
    for name, service in services.items():
        if "build" not in service:
            assert DIGEST.match(service["image"]), (name, service["image"])
    # cloudflared follows the edge: a release of the last year or so.
    year = int(services["cloudflared"]["image"].split(":")[1].split(".")[0])
    assert year >= 2026


def test_every_service_rotates_its_logs() -> None:
    for name, service in effective("compose.yaml")["services"].items():
        logging = service.get("logging", {})
        assert logging.get("driver") == "json-file", name
        assert logging["options"]["max-size"] and int(logging["options"]["max-file"]) >= 2, name


def test_the_image_installs_from_the_hashed_lock_file_without_locust() -> None:
    text = " ".join(dockerfile_lines())
    assert "COPY deploy/requirements.lock" in text
    assert "pip install --no-deps --require-hashes -r requirements.lock" in text
    lock = (DEPLOY / "requirements.lock").read_text()
    pins = re.findall(r"^([A-Za-z0-9_.-]+)==\S+ \\$", lock, re.M)
    assert len(pins) > 50
    blocks = re.split(r"^(?=[A-Za-z0-9_.-]+==)", lock, flags=re.M)[1:]
    assert all("--hash=sha256:" in block for block in blocks)
    assert not {"locust", "pytest", "torch"} & {pin.lower() for pin in pins}
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert not any(dep.startswith("locust") for dep in project["dependencies"])
    assert any(dep.startswith("locust") for dep in project["optional-dependencies"]["loadtest"])
