#!/usr/bin/env python3
"""Fill the ${NAME} placeholders of deploy/traefik/ and deploy/prometheus/ and write the result.

The configuration files are templates in which only addresses, ports, scrape targets and the
queue bound are placeholders; everything else (routes, middlewares, access-log filters, scrape
intervals, alert rules) is the file itself. compose.yaml runs this once per `up` (the `config`
service) with the compose preset; the end-to-end tests run it with loopback addresses and start
the real Traefik and Prometheus on the output. Standard library only: it runs in the app image
and in the tests.

    python deploy/render.py OUT_DIR --preset compose --app-replicas 3 --set INFERENCE_MAX_QUEUE=256

A string value is inserted as it is; any other value (a list, a number) as JSON, which is YAML.
An unknown or missing placeholder is an error, never an empty string.
"""

import argparse
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

DEPLOY_DIR = Path(__file__).resolve().parent
TEMPLATE_DIRS = ("traefik", "prometheus")
PLACEHOLDER = re.compile(r"\$\{([A-Z][A-Z0-9_]*)\}")
TEMPLATE_SUFFIXES = {".yml", ".yaml"}

# compose.yaml's project name and the app's port; replica N is the container <project>-app-N.
COMPOSE_PROJECT = "inference-node"
APP_PORT = 8000


def compose_values(app_replicas: int) -> dict[str, Any]:
    """The values for the compose stack (names and fixed addresses from compose.yaml)."""
    replicas = [f"{COMPOSE_PROJECT}-app-{n}:{APP_PORT}" for n in range(1, app_replicas + 1)]
    return {
        "TRAEFIK_PUBLIC_ADDRESS": ":8080",
        # Only on the metrics network: neither cloudflared nor the host can reach it.
        "TRAEFIK_INTERNAL_ADDRESS": "172.30.2.2:8081",
        # cloudflared's fixed address on the edge network: its X-Forwarded-For is kept.
        "TRAEFIK_TRUSTED_FORWARDERS": ["172.30.0.3"],
        "TRAEFIK_DYNAMIC_DIR": "/etc/node-config/traefik/dynamic",
        "TRAEFIK_ACCESS_LOG": "",  # stdout
        "APP_SERVERS": [{"url": f"http://{address}"} for address in replicas],
        "APP_HEALTH_PATH": "/readyz",
        # Every replica, found by Docker's DNS (the service name resolves to all of them).
        "APP_DNS_SD": [{"names": ["app"], "type": "A", "port": APP_PORT, "refresh_interval": "5s"}],
        "APP_STATIC_TARGETS": [],
        "TRAEFIK_METRICS_TARGETS": ["traefik:8081"],
        "PROMETHEUS_SELF_TARGETS": ["localhost:9090"],
        "ALERTMANAGER_TARGETS": ["alertmanager:9093"],
        "INFERENCE_MAX_QUEUE": 256,
    }


def placeholders(text: str) -> set[str]:
    return set(PLACEHOLDER.findall(text))


def render_text(text: str, values: dict[str, Any], *, source: str = "") -> str:
    """The text with every ${NAME} replaced; ValueError if a value is missing."""
    missing = sorted(placeholders(text) - values.keys())
    if missing:
        raise ValueError(f"{source or 'template'}: no value for {', '.join(missing)}")

    def value(match: re.Match[str]) -> str:
        item = values[match.group(1)]
        return item if isinstance(item, str) else json.dumps(item)

    return PLACEHOLDER.sub(value, text)


def render_tree(out_dir: Path, values: dict[str, Any], deploy_dir: Path = DEPLOY_DIR) -> None:
    """Render every template of TEMPLATE_DIRS into out_dir; every value must be used."""
    rendered: dict[Path, tuple[Path, str | None]] = {}  # target -> (source, text or None: copy)
    used: set[str] = set()
    for name in TEMPLATE_DIRS:
        for path in sorted(p for p in (deploy_dir / name).rglob("*") if p.is_file()):
            text = path.read_text() if path.suffix in TEMPLATE_SUFFIXES else None
            if text is not None:
                used |= placeholders(text)
                text = render_text(text, values, source=str(path))
            rendered[out_dir / path.relative_to(deploy_dir)] = (path, text)
    unused = sorted(values.keys() - used)
    if unused:
        raise ValueError(f"values that no template uses: {', '.join(unused)}")
    # Only now, with every template filled, touch the output (Traefik watches it).
    for target, (source, text) in rendered.items():
        target.parent.mkdir(parents=True, exist_ok=True)
        if text is None:
            shutil.copyfile(source, target)
        else:
            target.write_text(text)
    _remove_stale(out_dir, set(rendered))


def _remove_stale(out_dir: Path, rendered: set[Path]) -> None:
    """Delete files an earlier render left that no template makes now (Traefik would load them)."""
    for name in TEMPLATE_DIRS:
        for path in (out_dir / name).rglob("*"):
            if path.is_file() and path not in rendered:
                path.unlink()


def parse_set(items: list[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"--set takes NAME=VALUE, got {item!r}")
        try:
            values[name] = json.loads(raw)
        except json.JSONDecodeError:
            values[name] = raw
    return values


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--preset", choices=["compose"], default="compose")
    parser.add_argument("--app-replicas", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args(argv)
    try:
        values = {**compose_values(args.app_replicas), **parse_set(args.set)}
        render_tree(args.out_dir, values)
    except ValueError as exc:
        print(f"render: {exc}", file=sys.stderr)
        return 2
    print(f"rendered {', '.join(TEMPLATE_DIRS)} into {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
