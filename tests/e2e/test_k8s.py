"""deploy/k8s: built as kustomize builds it, validated against Kubernetes' own schemas."""

import ipaddress
import shutil
import subprocess

import kubernetes_validate
import pytest
import yaml

from tests.e2e.kustomize import build
from tests.e2e.servers import REPO

pytestmark = pytest.mark.e2e

K8S = REPO / "deploy" / "k8s"
TARGETS = {"base": K8S / "base", "overlays/cpu": K8S / "overlays" / "cpu"}
KUBERNETES_VERSION = "1.33.0"  # a release still supported upstream; schemas bundled


def by_kind(resources: list[dict]) -> dict[tuple[str, str], dict]:
    return {(r["kind"], r["metadata"]["name"]): r for r in resources}


def app_container(resources: list[dict]) -> dict:
    deployment = by_kind(resources)[("Deployment", "inference-node")]
    return deployment["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_every_manifest_validates_strictly_against_the_kubernetes_schemas(target: str) -> None:
    resources = build(TARGETS[target])
    assert len(resources) >= 9
    for resource in resources:
        kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)


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


def test_the_ingress_routes_the_public_paths_and_never_metrics() -> None:
    ingress = by_kind(build(TARGETS["base"]))[("Ingress", "inference-node")]
    paths = {p["path"] for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]}
    assert paths == {"/v1/", "/ws/", "/console", "/admin", "/static/", "/healthz"}
    assert not any("metrics" in path or path in ("/", "/readyz") for path in paths)


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
