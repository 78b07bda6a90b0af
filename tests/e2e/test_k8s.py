"""deploy/k8s: built as kustomize builds it, validated against Kubernetes' own schemas and the
custom resources against their CRDs' published schemas (tests/e2e/schemas/)."""

import ipaddress
import json
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.e2e.kustomize import build
from tests.e2e.servers import REPO, require_binary

pytestmark = pytest.mark.e2e

K8S = REPO / "deploy" / "k8s"
TARGETS = {"base": K8S / "base", "overlays/cpu": K8S / "overlays" / "cpu"}
KUBERNETES_VERSION = "1.33.0"  # a release still supported upstream; schemas bundled
SCHEMAS = REPO / "tests" / "e2e" / "schemas"
# apiVersion group -> the vendored schema's file prefix (tests/e2e/schemas/README.md).
CUSTOM_GROUPS = ("traefik.io", "monitoring.coreos.com")


def by_kind(resources: list[dict]) -> dict[tuple[str, str], dict]:
    return {(r["kind"], r["metadata"]["name"]): r for r in resources}


def app_container(resources: list[dict]) -> dict:
    deployment = by_kind(resources)[("Deployment", "inference-node")]
    return deployment["spec"]["template"]["spec"]["containers"][0]


def is_custom(resource: dict) -> bool:
    return resource["apiVersion"].split("/")[0] in CUSTOM_GROUPS


def strict(schema: dict) -> dict:
    """The CRD's schema refusing unknown fields, as the API server's strict field validation
    (kubectl's default) does: every object with properties, unless it keeps unknown fields."""
    if isinstance(schema, dict):
        schema = {key: strict(value) for key, value in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        return [strict(item) for item in schema]
    return schema


@cache
def crd_schema(api_version: str, kind: str) -> dict:
    group, version = api_version.split("/")
    path = SCHEMAS / f"{group}_{kind.lower()}_{version}.json"
    return strict(json.loads(path.read_text()))


def validate_custom(resource: dict) -> None:
    schema = crd_schema(resource["apiVersion"], resource["kind"])
    jsonschema.Draft7Validator(schema).validate(resource)


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_every_manifest_validates_strictly_against_the_kubernetes_schemas(target: str) -> None:
    resources = build(TARGETS[target])
    assert len(resources) >= 20
    for resource in resources:
        if is_custom(resource):
            validate_custom(resource)
        else:
            kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)


def test_the_restore_job_validates_too() -> None:
    job = yaml.safe_load((K8S / "restore" / "job.yaml").read_text())
    kubernetes_validate.validate(job, KUBERNETES_VERSION, strict=True)
    pod = job["spec"]["template"]["spec"]
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "inference-node-backups"
    backup = by_kind(build(TARGETS["base"]))[("CronJob", "inference-node-backup")]
    assert (
        pod["containers"][0]["image"]
        == (backup["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["image"])
    )


def test_the_custom_resources_are_the_ones_the_schemas_cover() -> None:
    kinds = {(r["apiVersion"], r["kind"]) for r in build(TARGETS["base"]) if is_custom(r)}
    assert kinds == {
        ("traefik.io/v1alpha1", "IngressRoute"),
        ("traefik.io/v1alpha1", "Middleware"),
        ("traefik.io/v1alpha1", "TraefikService"),
        ("monitoring.coreos.com/v1", "ServiceMonitor"),
        ("monitoring.coreos.com/v1", "PrometheusRule"),
    }


@pytest.mark.parametrize(
    ("kind", "name", "path", "value"),
    [
        ("IngressRoute", "inference-node", ("spec", "routes", 0, "midlewares"), []),
        ("TraefikService", "inference-node", ("spec", "weighted", "services", 0, "strategy"), "x"),
        ("Middleware", "body-limit", ("spec", "buffering", "maxRequestBodyByte"), 1),
        ("ServiceMonitor", "inference-node", ("spec", "endpoints", 0, "intervall"), "5s"),
        ("PrometheusRule", "inference-node", ("spec", "groups", 0, "rules", 0, "expr"), None),
    ],
)
def test_the_crd_schemas_refuse_a_misspelt_field_or_a_bad_value(
    kind: str, name: str, path: tuple, value: object
) -> None:
    resource = by_kind(build(TARGETS["base"]))[(kind, name)]
    node = resource
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        validate_custom(resource)


def test_the_validator_refuses_a_misspelt_field() -> None:
    deployment = by_kind(build(TARGETS["base"]))[("Deployment", "inference-node")]
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="no kubectl with kustomize here")
@pytest.mark.parametrize("target", sorted(TARGETS))
def test_the_python_build_matches_kubectl_kustomize(target: str) -> None:
    result = subprocess.run(
        ["kubectl", "kustomize", str(TARGETS[target])], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert by_kind(list(yaml.safe_load_all(result.stdout))) == by_kind(build(TARGETS[target]))


def test_the_app_requests_a_gpu_and_is_ready_only_on_readyz() -> None:
    container = app_container(build(TARGETS["base"]))
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # The kubelet would send the pod IP as Host, which Django refuses: every probe says
    # localhost, which the ConfigMap's ALLOWED_HOSTS lists.
    config = by_kind(build(TARGETS["base"]))[("ConfigMap", "inference-node-config")]
    assert "localhost" in config["data"]["ALLOWED_HOSTS"].split(",")
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        headers = container[probe]["httpGet"]["httpHeaders"]
        assert headers == [{"name": "Host", "value": "localhost"}]
    assert container["image"] == "registry.example.com/inference-node:cuda"


def test_the_cpu_overlay_drops_the_gpu_and_uses_the_cpu_image() -> None:
    resources = build(TARGETS["overlays/cpu"])
    container = app_container(resources)
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    assert container["image"] == "registry.example.com/inference-node:cpu"
    config = by_kind(resources)[("ConfigMap", "inference-node-config")]
    assert config["data"]["INFERENCE_DEVICE"] == "cpu"


def test_pods_are_scraped_and_run_as_non_root() -> None:
    resources = build(TARGETS["base"])
    deployment = by_kind(resources)[("Deployment", "inference-node")]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    env = {item["name"]: item["value"] for item in app_container(resources)["env"]}
    assert env["PROMETHEUS_MULTIPROC_DIR"] == "/run/metrics"


def route_paths(match: str) -> set[str]:
    return set(re.findall(r"Path(?:Prefix)?\(`([^`]*)`\)", match))


def test_the_ingress_route_serves_the_public_paths_and_never_metrics() -> None:
    kinds = by_kind(build(TARGETS["base"]))
    assert not any(kind == "Ingress" for kind, _ in kinds)  # one way in, not two
    route = kinds[("IngressRoute", "inference-node")]["spec"]
    assert route["entryPoints"] == ["websecure"]
    routes = {r["priority"]: r for r in route["routes"]}
    general, streaming = routes[10], routes[20]
    assert route_paths(general["match"]) == {
        "/v1/", "/ws/", "/console/", "/console", "/admin/", "/admin", "/static/", "/healthz",
    }  # fmt: skip
    paths = route_paths(general["match"]) | route_paths(streaming["match"])
    assert not any("metrics" in path or path in ("/", "/readyz") for path in paths)
    # The body limit on everything but the streaming paths (buffering would hold a stream),
    # which win by priority.
    assert {m["name"] for m in general["middlewares"]} == {"body-limit", "retry-unreachable"}
    assert route_paths(streaming["match"]) == {
        "/v1/completions", "/v1/chat/completions", "/v1/responses", "/ws/",
    }  # fmt: skip
    assert [m["name"] for m in streaming["middlewares"]] == ["retry-unreachable"]
    limit = kinds[("Middleware", "body-limit")]["spec"]["buffering"]
    assert limit["maxRequestBodyBytes"] == 1048576
    # Both routes share one p2c balancer over the app's Service.
    for r in (general, streaming):
        assert r["services"] == [{"kind": "TraefikService", "name": "inference-node"}]
    (backend,) = kinds[("TraefikService", "inference-node")]["spec"]["weighted"]["services"]
    assert backend["strategy"] == "p2c"
    assert (backend["name"], backend["port"]) == ("inference-node", "http")


def test_postgres_and_redis_are_external_services_and_secrets_are_not_committed() -> None:
    resources = build(TARGETS["base"])
    kinds = by_kind(resources)
    for name in ("postgres", "redis"):
        assert kinds[("Service", name)]["spec"]["type"] == "ExternalName"
    assert not any(resource["kind"] == "Secret" for resource in resources)
    refs = [
        source.get("secretRef", {}).get("name") for source in app_container(resources)["envFrom"]
    ]
    assert "inference-node-secrets" in refs


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_forwarded_addresses_are_believed_from_the_ingress_pods_only(target: str) -> None:
    data = by_kind(build(TARGETS[target]))[("ConfigMap", "inference-node-config")]["data"]
    assert data["TRUSTED_PROXY_HEADER"] == "X-Forwarded-For"
    trusted = [item for item in data["TRUSTED_PROXY_ADDRESSES"].split(",") if item.strip()]
    # Empty (no header believed) until an overlay names the ingress controller's pods; never a
    # whole pod network such as 10.0.0.0/8, from which any pod could name any client address.
    for item in trusted:
        assert ipaddress.ip_network(item.strip(), strict=False).num_addresses <= 256, item
    assert data["SECURE_HSTS_SECONDS"] == "31536000"


def test_probes_tell_a_busy_pod_from_a_dead_one() -> None:
    from django.conf import settings

    from console.management.commands.serve import STOP_MARGIN_SECONDS

    resources = build(TARGETS["base"])
    container = app_container(resources)
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["timeoutSeconds"] >= 5, probe  # the kubelet's default is 1 s
    assert container["readinessProbe"]["failureThreshold"] >= 3
    liveness = container["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 60
    # Kubernetes waits for serve's own stop: the model's drain, then its margin.
    pod = by_kind(resources)[("Deployment", "inference-node")]["spec"]["template"]["spec"]
    grace = settings.INFERENCE_DRAIN_SECONDS + STOP_MARGIN_SECONDS
    assert pod["terminationGracePeriodSeconds"] >= grace


def pod_spec(resources: list[dict], kind: str, name: str) -> dict:
    spec = by_kind(resources)[(kind, name)]["spec"]
    spec = spec.get("jobTemplate", {}).get("spec", spec)
    return spec["template"]["spec"]


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_the_model_comes_from_the_model_image_into_each_pods_own_volume(target: str) -> None:
    resources = build(TARGETS[target])
    # No shared volume that most storage classes cannot provide (ReadOnlyMany) or that nothing
    # fills: each pod copies the model image's files before the app starts.
    assert not any(r["kind"] == "PersistentVolumeClaim" and "models" in r["metadata"]["name"]
                   for r in resources)  # fmt: skip
    pod = pod_spec(resources, "Deployment", "inference-node")
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert "emptyDir" in volumes["models"]
    first, second = pod["initContainers"]
    assert first["name"] == "model"
    assert first["image"] == "registry.example.com/inference-node-model:flan-t5-base"
    assert {"name": "models", "mountPath": "/target"} in first["volumeMounts"]
    assert "/models/." in " ".join(first["command"]) and "/target" in " ".join(first["command"])
    app = app_container(resources)
    mount = next(m for m in app["volumeMounts"] if m["name"] == "models")
    assert mount == {"name": "models", "mountPath": "/models", "readOnly": True}
    config = by_kind(resources)[("ConfigMap", "inference-node-config")]["data"]
    # The pods stay offline and find the cache where the model image put it.
    assert config["HF_HUB_OFFLINE"] == "1"
    assert config["HF_HOME"] == "/models/hf"
    assert second["name"] == "wait-for-migrations"


def test_the_model_image_downloads_what_the_loader_reads_offline() -> None:
    text = (REPO / "deploy" / "Dockerfile.model").read_text()
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    download = lines.index(next(line for line in lines if line.endswith("AS download")))
    model = lines.index(next(line for line in lines if line.endswith("AS model")))
    stage = " ".join(lines[download:model])
    assert "HF_HUB_OFFLINE=0" in stage and "HF_HOME=/models/hf" in stage
    # The app's own loader, with the file patterns it later finds offline.
    assert "from engine.loading import locate_model" in stage and "allow_download=True" in stage
    final = " ".join(lines[model:])
    assert "COPY --from=download --chown=10001:10001 /models/hf /models/hf" in final
    assert "COPY --from=adapters" in final and "/models/adapters/" in final
    assert "FROM scratch AS adapters" in text  # empty unless --build-context adapters=DIR


@pytest.mark.parametrize(
    "dockerfile", ["deploy/Dockerfile.model", "deploy/k8s/pgbouncer/Dockerfile"]
)
def test_the_kubernetes_images_pass_hadolint(dockerfile: str) -> None:
    result = subprocess.run(
        [require_binary("hadolint"), str(REPO / dockerfile)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_new_pods_start_only_after_the_migration_job_and_it_goes_to_postgres_as_owner() -> None:
    resources = build(TARGETS["base"])
    wait = pod_spec(resources, "Deployment", "inference-node")["initContainers"][1]
    assert wait["image"] == app_container(resources)["image"]  # the new release's migrations
    assert "manage.py migrate --check" in " ".join(wait["command"])
    job = pod_spec(resources, "Job", "inference-node-migrate")["containers"][0]
    assert job["command"] == ["python", "manage.py", "migrate", "--noinput"]
    env = {item["name"]: item for item in job["env"]}
    assert env["DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "inference-node-db-owner"
    # The app's pods never hold the owner's credentials.
    text = json.dumps(by_kind(resources)[("Deployment", "inference-node")])
    assert "inference-node-db-owner" not in text


def test_the_app_goes_through_pgbouncer_in_transaction_mode() -> None:
    resources = build(TARGETS["base"])
    kinds = by_kind(resources)
    ini = kinds[("ConfigMap", "inference-node-pgbouncer")]["data"]["pgbouncer.ini"]
    settings = dict(
        re.findall(r"^(\w+)[ \t]*=[ \t]*(.*)$", ini.split("[pgbouncer]")[1], flags=re.MULTILINE)
    )
    assert settings["pool_mode"] == "transaction"
    assert settings["listen_port"] == "6432"
    assert settings["auth_type"] == "scram-sha-256"
    assert "host=postgres port=5432" in ini.split("[pgbouncer]")[0]
    assert kinds[("Service", "pgbouncer")]["spec"]["ports"][0]["port"] == 6432
    pgbouncer = pod_spec(resources, "Deployment", "pgbouncer")
    assert pgbouncer["securityContext"]["runAsNonRoot"] is True
    secrets = {v["secret"]["secretName"] for v in pgbouncer["volumes"] if "secret" in v}
    assert secrets == {"inference-node-pgbouncer"}
    # The connection budget docs/deploy.md gives: per PgBouncer pod, the pool and its reserve.
    budget = int(settings["default_pool_size"]) + int(settings["reserve_pool_size"])
    assert budget <= int(settings["max_db_connections"])
    replicas = kinds[("Deployment", "pgbouncer")]["spec"]["replicas"]
    assert replicas * int(settings["max_db_connections"]) <= 80  # of Postgres's default 100


def test_autoscaling_follows_the_queue_depth_the_engine_exports() -> None:
    from engine import metrics

    kinds = by_kind(build(TARGETS["base"]))
    hpa = kinds[("HorizontalPodAutoscaler", "inference-node")]["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1", "kind": "Deployment", "name": "inference-node"
    }  # fmt: skip
    assert 2 <= hpa["minReplicas"] < hpa["maxReplicas"]
    (metric,) = hpa["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["target"]["type"] == "AverageValue"
    name = metric["pods"]["metric"]["name"]
    assert name == metrics.QUEUE_DEPTH._name  # the gauge engine/metrics.py exports
    # The Deployment leaves the replica count to the HPA.
    assert "replicas" not in kinds[("Deployment", "inference-node")]["spec"]
    adapter = yaml.safe_load((K8S / "prometheus-adapter" / "values.yaml").read_text())
    (rule,) = adapter["rules"]["custom"]
    assert rule["name"]["as"] == name and rule["seriesQuery"].startswith(name + "{")
    overrides = rule["resources"]["overrides"]
    assert overrides == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}


def test_the_adapters_query_is_valid_promql_once_filled_in(tmp_path: Path) -> None:
    adapter = yaml.safe_load((K8S / "prometheus-adapter" / "values.yaml").read_text())
    (rule,) = adapter["rules"]["custom"]
    query = (
        rule["metricsQuery"]
        .replace("<<.Series>>", "inference_queue_depth")
        .replace("<<.LabelMatchers>>", 'namespace="inference-node",pod=~"a|b"')
        .replace("<<.GroupBy>>", "pod")
    )
    rules = {"groups": [{"name": "adapter", "rules": [{"record": "adapter:q", "expr": query}]}]}
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
    result = subprocess.run(
        [require_binary("promtool"), "check", "rules", str(tmp_path / "rules.yml")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_disruptions_and_spread_keep_pods_apart() -> None:
    resources = build(TARGETS["base"])
    kinds = by_kind(resources)
    pod_labels = kinds[("Deployment", "inference-node")]["spec"]["selector"]["matchLabels"]
    pdb = kinds[("PodDisruptionBudget", "inference-node")]["spec"]
    assert pdb["selector"]["matchLabels"] == pod_labels and pdb["maxUnavailable"] == 1
    assert pdb["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    spread = pod_spec(resources, "Deployment", "inference-node")["topologySpreadConstraints"]
    keys = {c["topologyKey"] for c in spread}
    assert keys == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    for constraint in spread:
        assert constraint["labelSelector"]["matchLabels"] == pod_labels


def policy_ports(rules: list[dict]) -> set[int]:
    return {port["port"] for rule in rules for port in rule.get("ports", [])}


def test_network_policies_let_only_the_ingress_in_and_the_app_out_to_its_databases() -> None:
    kinds = by_kind(build(TARGETS["base"]))
    deny = kinds[("NetworkPolicy", "default-deny")]["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    app = kinds[("NetworkPolicy", "app")]["spec"]
    sources = [peer for rule in app["ingress"] for peer in rule["from"]]
    namespaces = {p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                  for p in sources}  # fmt: skip
    assert namespaces == {"traefik", "monitoring"}  # the ingress controller; Prometheus scrapes
    assert all("podSelector" in peer for peer in sources)  # its pods, not the whole namespace
    assert policy_ports(app["ingress"]) == {8000}
    # Out: PgBouncer, Redis, DNS; nothing else (no hub, no internet).
    assert policy_ports(app["egress"]) == {6432, 6379, 53}
    pgbouncer = kinds[("NetworkPolicy", "pgbouncer")]["spec"]
    assert policy_ports(pgbouncer["egress"]) == {5432, 53}
    assert (
        pgbouncer["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
        == (kinds[("Deployment", "inference-node")]["spec"]["selector"]["matchLabels"])
    )
    owner = kinds[("NetworkPolicy", "database-owner")]["spec"]
    assert policy_ports(owner["egress"]) == {5432, 53} and "ingress" not in owner


def test_the_service_monitor_scrapes_every_app_pod_on_metrics() -> None:
    kinds = by_kind(build(TARGETS["base"]))
    monitor = kinds[("ServiceMonitor", "inference-node")]["spec"]
    service = kinds[("Service", "inference-node")]
    assert monitor["selector"]["matchLabels"] == service["metadata"]["labels"]
    (endpoint,) = monitor["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"]
    assert endpoint["path"] == "/metrics"


def k8s_rules() -> dict:
    rule = by_kind(build(TARGETS["base"]))[("PrometheusRule", "inference-node")]
    return {"groups": rule["spec"]["groups"]}


def test_the_kubernetes_rules_use_the_clusters_labels_not_composes() -> None:
    text = json.dumps(k8s_rules())
    assert 'job=\\"app\\"' not in text and "instance" not in text
    config = by_kind(build(TARGETS["base"]))[("ConfigMap", "inference-node-config")]["data"]
    saturated = next(r for g in k8s_rules()["groups"] for r in g["rules"]
                     if r["alert"] == "InferenceQueueSaturated")  # fmt: skip
    assert f"0.8 * {config['INFERENCE_MAX_QUEUE']}" in saturated["expr"]


def series(name: str, pod: str) -> str:
    """A series as the ServiceMonitor's scrape labels it."""
    return f'{name}{{job="inference-node",namespace="inference-node",pod="{pod}"}}'


RULE_TESTS = {
    "rule_files": ["rules.yml"],
    "evaluation_interval": "1m",
    "tests": [
        {
            "interval": "1m",
            "input_series": [
                {
                    "series": 'up{job="inference-node",namespace="inference-node",pod="p-1"}',
                    "values": "0x10",
                },
                # compose's labels: not this cluster's job, never an alert here.
                {"series": 'up{job="app",instance="app-1:8000"}', "values": "0x10"},
                {
                    "series": series("inference_model_ready", "p-2"),
                    "values": "0x20",
                },
                {
                    "series": series("inference_queue_depth", "p-1"),
                    "values": "210x10",
                },
                {
                    "series": series("inference_queue_depth", "p-2"),
                    "values": "0x10",
                },
                {
                    "series": 'kube_pod_container_status_restarts_total{namespace="inference-node",'
                    'pod="p-3",container="app"}',
                    "values": "0 1 2 3 3 3",
                },
                {
                    "series": 'ratelimit_fail_open_total{job="inference-node",'
                    'namespace="inference-node",pod="p-1"}',
                    "values": "0 0 4 4 4",
                },
            ],
            "alert_rule_test": [
                {
                    "eval_time": "3m",
                    "alertname": "InferenceNodePodDown",
                    "exp_alerts": [
                        {
                            "exp_labels": {
                                "severity": "critical",
                                "job": "inference-node",
                                "namespace": "inference-node",
                                "pod": "p-1",
                            },
                            "exp_annotations": {
                                "summary": "Pod inference-node/p-1 does not answer /metrics"
                            },
                        }
                    ],
                },
                {
                    "eval_time": "16m",
                    "alertname": "InferenceNodeModelNotReady",
                    "exp_alerts": [
                        {
                            "exp_labels": {
                                "severity": "critical",
                                "namespace": "inference-node",
                                "pod": "p-2",
                            },
                            "exp_annotations": {
                                "summary": "The model of inference-node/p-2 has not "
                                "been ready for 15 minutes"
                            },
                        }
                    ],
                },
                {
                    "eval_time": "3m",
                    "alertname": "InferenceQueueSaturated",
                    "exp_alerts": [
                        {
                            "exp_labels": {
                                "severity": "warning",
                                "namespace": "inference-node",
                                "pod": "p-1",
                            },
                            "exp_annotations": {
                                "summary": "Inference queue of inference-node/p-1 is "
                                "above 80% of its bound"
                            },
                        }
                    ],
                },
                {
                    "eval_time": "4m",
                    "alertname": "InferenceNodePodRestarting",
                    "exp_alerts": [
                        {
                            "exp_labels": {
                                "severity": "critical",
                                "namespace": "inference-node",
                                "pod": "p-3",
                                "container": "app",
                            },
                            "exp_annotations": {
                                "summary": "Pod inference-node/p-3 restarted 3 times in 15 minutes"
                            },
                        }
                    ],
                },
                {
                    "eval_time": "3m",
                    "alertname": "RateLimiterFailingOpen",
                    "exp_alerts": [
                        {
                            "exp_labels": {"severity": "critical", "namespace": "inference-node"},
                            "exp_annotations": {
                                "summary": "inference-node: the rate limiter failed "
                                "open 4 times in 5 minutes (Redis?)"
                            },
                        }
                    ],
                },
            ],
        },
        {
            "interval": "1m",
            "input_series": [
                {
                    "series": "kube_horizontalpodautoscaler_status_current_replicas{namespace="
                    '"inference-node",horizontalpodautoscaler="inference-node"}',
                    "values": "10x20",
                },
                {
                    "series": "kube_horizontalpodautoscaler_spec_max_replicas{namespace="
                    '"inference-node",horizontalpodautoscaler="inference-node"}',
                    "values": "10x20",
                },
                {
                    "series": series("inference_queue_depth", "p-1"),
                    "values": "9x20",
                },
            ],
            "alert_rule_test": [
                {"eval_time": "10m", "alertname": "InferenceNodeAutoscalerAtMax", "exp_alerts": []},
                {
                    "eval_time": "16m",
                    "alertname": "InferenceNodeAutoscalerAtMax",
                    "exp_alerts": [
                        {
                            "exp_labels": {
                                "severity": "warning",
                                "namespace": "inference-node",
                                "horizontalpodautoscaler": "inference-node",
                            },
                            "exp_annotations": {
                                "summary": "inference-node: the autoscaler is at "
                                "maxReplicas and the queues still grow"
                            },
                        }
                    ],
                },
            ],
        },
    ],
}


def test_promtool_accepts_and_unit_tests_the_kubernetes_rules(tmp_path: Path) -> None:
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(k8s_rules()))
    (tmp_path / "rules.test.yml").write_text(yaml.safe_dump(RULE_TESTS))
    promtool = require_binary("promtool")
    for args in (["check", "rules", "rules.yml"], ["test", "rules", "rules.test.yml"]):
        result = subprocess.run(
            [promtool, *args], cwd=tmp_path, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stdout + result.stderr
