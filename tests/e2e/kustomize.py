"""The few kustomize features deploy/k8s uses, in Python, for machines without kustomize.

resources (files and directories), namespace, images (newName/newTag) and JSON 6902 patches
with a kind/name target. The tests compare this with `kubectl kustomize` where one is installed.
"""

import copy
from pathlib import Path

import yaml

CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume"}
CLUSTER_SCOPED |= {"StorageClass", "CustomResourceDefinition", "IngressClass"}


def build(directory: Path) -> list[dict]:
    """The resources of a kustomization directory, transformed as kustomize would."""
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
    resources: list[dict] = []
    for entry in spec.get("resources", []):
        path = (directory / entry).resolve()
        if path.is_dir():
            resources += build(path)
        else:
            resources += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    for patch in spec.get("patches", []):
        apply_patch(resources, patch)
    for image in spec.get("images", []):
        set_image(resources, image)
    if "namespace" in spec:
        for resource in resources:
            if resource["kind"] not in CLUSTER_SCOPED:
                resource["metadata"]["namespace"] = spec["namespace"]
    return resources


def containers(resource: dict) -> list[dict]:
    spec = resource.get("spec", {})
    # A CronJob's pods are one level deeper, in its Job template.
    spec = spec.get("jobTemplate", {}).get("spec", spec)
    pod = spec.get("template", {}).get("spec", {})
    return pod.get("containers", []) + pod.get("initContainers", [])


def set_image(resources: list[dict], image: dict) -> None:
    for resource in resources:
        for container in containers(resource):
            name, _, tag = container["image"].partition(":")
            if name != image["name"]:
                continue
            name = image.get("newName", name)
            tag = image.get("newTag", tag)
            container["image"] = f"{name}:{tag}" if tag else name


def apply_patch(resources: list[dict], patch: dict) -> None:
    target = patch["target"]
    for resource in resources:
        if resource["kind"] == target["kind"] and resource["metadata"]["name"] == target["name"]:
            for operation in yaml.safe_load(patch["patch"]):
                apply_operation(resource, operation)


def apply_operation(document: dict, operation: dict) -> None:
    """One JSON 6902 add/remove/replace."""
    *parents, last = [
        part.replace("~1", "/").replace("~0", "~") for part in operation["path"].split("/")[1:]
    ]
    node = document
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    key: int | str = int(last) if isinstance(node, list) and last != "-" else last
    if operation["op"] == "remove":
        del node[key]
    elif operation["op"] == "replace":
        if key not in (range(len(node)) if isinstance(node, list) else node):
            raise KeyError(operation["path"])
        node[key] = copy.deepcopy(operation["value"])
    elif operation["op"] == "add":
        if isinstance(node, list):
            node.insert(len(node) if key == "-" else key, copy.deepcopy(operation["value"]))
        else:
            node[key] = copy.deepcopy(operation["value"])
    else:
        raise ValueError(f"unsupported op {operation['op']}")
