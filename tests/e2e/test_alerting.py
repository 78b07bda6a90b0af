"""Alerts that reach someone: the rules, Alertmanager's configuration, and a real delivery.

Real binaries throughout: promtool (test_prometheus.py runs the rules' unit tests), amtool and
Alertmanager from Debian's prometheus-alertmanager, Prometheus, the app and Traefik of the
session's stack. Fakes only where the far end is someone else's: a scrape target that exposes a
failing counter, the webhook receiver and the SMTP relay (local servers in this process).
"""

import json
import os
import shutil
import socketserver
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from deploy.render import compose_values, render_tree
from tests.e2e.conftest import Replica, Stack, start_replica
from tests.e2e.dashboards import exposed_names, metric_names
from tests.e2e.servers import (
    REPO,
    Server,
    http_get,
    require_binary,
    start,
    wait_http,
    wait_until,
)

pytestmark = pytest.mark.e2e

DEPLOY = REPO / "deploy"
TEMPLATE = DEPLOY / "alertmanager" / "alertmanager.yml"
ENTRYPOINT = DEPLOY / "alertmanager" / "entrypoint.sh"
RULES = DEPLOY / "prometheus" / "rules" / "alerts.yml"
RULE_TESTS = DEPLOY / "prometheus" / "tests" / "alerts.test.yml"
# Loopback ports of this module's servers (helper range 7500-7599 on the shared machine).
PORTS = {"prometheus": 7510, "alertmanager": 7511, "webhook": 7512, "target": 7513, "smtp": 7514}
REQUIRED = ("ALERT_WEBHOOK_URL", "ALERT_SMTP_SMARTHOST", "ALERT_EMAIL_FROM", "ALERT_EMAIL_TO")
# Markers that must never show in a log, an error or Alertmanager's API.
WEBHOOK_TOKEN = "whtoken-5f1c0e"
SMTP_PASSWORD = 'pw-"quoted"\\back-7d2a'


def alertmanager_binary() -> str:
    """Alertmanager as Debian installs it (prometheus-alertmanager) or as upstream names it."""
    path = shutil.which("alertmanager") or shutil.which("prometheus-alertmanager")
    if path is None:
        raise RuntimeError(
            "alertmanager is not installed (apt-get install prometheus-alertmanager; .ci/run does)"
        )
    return path


def alert_env(**overrides: str) -> dict[str, str]:
    """What an operator puts in deploy/.env, with values that need escaping."""
    env = {
        "ALERT_WEBHOOK_URL": f"http://127.0.0.1:{PORTS['webhook']}/hook?token={WEBHOOK_TOKEN}",
        "ALERT_SMTP_SMARTHOST": f"127.0.0.1:{PORTS['smtp']}",
        "ALERT_EMAIL_FROM": "Inference node <alerts@example.com>",
        "ALERT_EMAIL_TO": "oncall@example.com",
        "ALERT_SMTP_USERNAME": "",
        "ALERT_SMTP_PASSWORD": SMTP_PASSWORD,
        "ALERT_SMTP_REQUIRE_TLS": "false",
    }
    return {**env, **overrides}


def awk_flavours() -> list[str]:
    """The awks the entrypoint must work with: the image's (busybox) and Debian's."""
    return [name for name in ("busybox", "gawk", "mawk") if shutil.which(name)]


def render(out: Path, env: dict[str, str], awk: str = "gawk") -> subprocess.CompletedProcess[str]:
    """entrypoint.sh --render-only with `awk` being the given flavour (amtool from PATH)."""
    bin_dir = out.parent / f"bin-{awk}"
    bin_dir.mkdir(exist_ok=True)
    link = bin_dir / "awk"
    if not link.exists():
        link.symlink_to(shutil.which(awk) or awk)  # busybox runs the applet its name says
    shell = [shutil.which("busybox") or "sh", "sh"] if awk == "busybox" else ["sh"]
    path = f"{bin_dir}:{Path(require_binary('amtool')).parent}:{os.environ['PATH']}"
    return subprocess.run(  # noqa: S603 (our own script)
        [*shell, str(ENTRYPOINT), "--render-only", str(TEMPLATE), str(out)],
        env={"PATH": path, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def amtool_check(config: Path) -> str:
    result = subprocess.run(  # noqa: S603
        [require_binary("amtool"), "check-config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.parametrize("awk", awk_flavours())
def test_amtool_accepts_the_configuration_the_entrypoint_renders(awk: str, tmp_path: Path) -> None:
    out = tmp_path / "alertmanager.yml"
    result = render(out, alert_env(), awk)
    assert result.returncode == 0, result.stderr
    assert "SUCCESS" in amtool_check(out)
    config = yaml.safe_load(out.read_text())
    # Every value arrives as it was given: quotes and backslashes escaped, nothing split.
    assert config["global"]["smtp_auth_password"] == SMTP_PASSWORD
    assert config["global"]["smtp_from"] == "Inference node <alerts@example.com>"
    assert config["global"]["smtp_require_tls"] is False
    (receiver,) = config["receivers"]
    assert config["route"]["receiver"] == receiver["name"]
    assert receiver["webhook_configs"][0]["url"] == alert_env()["ALERT_WEBHOOK_URL"]
    assert receiver["email_configs"][0]["to"] == "oncall@example.com"
    assert out.stat().st_mode & 0o077 == 0  # it holds the secrets: its owner's only
    assert WEBHOOK_TOKEN not in result.stdout + result.stderr


@pytest.mark.parametrize("name", REQUIRED)
def test_a_missing_receiver_variable_stops_alertmanager_with_its_name(
    name: str, tmp_path: Path
) -> None:
    out = tmp_path / "alertmanager.yml"
    result = render(out, alert_env(**{name: ""}))
    assert result.returncode == 2
    assert f"set {name} in deploy/.env" in result.stderr
    assert not out.exists() and not Path(f"{out}.tmp").exists()
    assert WEBHOOK_TOKEN not in result.stderr and SMTP_PASSWORD not in result.stderr


def test_a_value_amtool_refuses_stops_alertmanager(tmp_path: Path) -> None:
    result = render(tmp_path / "alertmanager.yml", alert_env(ALERT_SMTP_REQUIRE_TLS="maybe"))
    assert result.returncode == 2
    assert "not valid (amtool check-config)" in result.stderr


def placeholders(text: str) -> dict[str, bool]:
    """{name: required} of the template's ${NAME} and ${NAME:-default} (comments left out)."""
    import re

    found: dict[str, bool] = {}
    for line in text.splitlines():
        if not line.lstrip().startswith("#"):
            for name, default in re.findall(r"\$\{([A-Z][A-Z0-9_]*)(:-[^}]*)?\}", line):
                found[name] = not default
    return found


def test_compose_hands_the_entrypoint_every_variable_the_template_reads() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    service = compose["services"]["alertmanager"]
    wanted = placeholders(TEMPLATE.read_text())
    # The tests shorten the grouping; compose keeps Alertmanager's defaults for those.
    timing = {"ALERT_GROUP_WAIT", "ALERT_GROUP_INTERVAL", "ALERT_REPEAT_INTERVAL"}
    assert set(service["environment"]) == set(wanted) - timing
    for name, required in wanted.items():
        if name in timing:
            continue
        text = service["environment"][name]
        assert (f"${{{name}:?set {name} in deploy/.env}}" == text) is required, name
    assert {name for name, required in wanted.items() if required} == set(REQUIRED)
    # Prometheus finds it by its service name on a network they share with no one else: its API
    # shows the webhook URL (Alertmanager 0.25 does not mask it) and takes silences.
    assert compose_values(app_replicas=2)["ALERTMANAGER_TARGETS"] == ["alertmanager:9093"]
    (shared,) = set(service["networks"]) & set(compose["services"]["prometheus"]["networks"])
    on_shared = {n for n, svc in compose["services"].items() if shared in svc.get("networks", [])}
    assert on_shared == {"prometheus", "alertmanager"}
    assert compose["networks"][shared]["internal"] is True
    assert service["entrypoint"][-1].endswith("/entrypoint.sh")


def rules() -> list[dict]:
    return [
        rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]
    ]


def test_every_rule_has_a_unit_test_that_fires_it_and_one_that_does_not() -> None:
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case["alert_rule_test"]:
            (fired if check["exp_alerts"] else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in rules()}
    assert names - fired == set() and names - quiet == set()


# --- real servers --------------------------------------------------------------------------


class Recorder:
    """What the fake far ends received."""

    def __init__(self) -> None:
        self.webhook: list[dict] = []
        self.webhook_paths: list[str] = []
        self.mails: list[tuple[list[str], str]] = []
        self.scrapes = 0


class WebhookHandler(BaseHTTPRequestHandler):
    recorder: Recorder

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.recorder.webhook_paths.append(self.path)
        self.recorder.webhook.append(json.loads(body))
        self.send_response(200)
        self.end_headers()

    def do_GET(self) -> None:  # noqa: N802
        # The fake scrape target: a replica whose key lookups keep failing (one more each scrape).
        self.recorder.scrapes += 1
        body = (
            "# TYPE auth_key_lookups_unavailable_total counter\n"
            f"auth_key_lookups_unavailable_total {self.recorder.scrapes}\n"
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class SmtpHandler(socketserver.StreamRequestHandler):
    """Just enough SMTP for Alertmanager's plain (no STARTTLS, no AUTH) delivery."""

    recorder: Recorder

    def reply(self, line: str) -> None:
        self.wfile.write(f"{line}\r\n".encode())

    def handle(self) -> None:
        recipients: list[str] = []
        self.reply("220 sink ESMTP")
        while line := self.rfile.readline().decode(errors="replace").rstrip("\r\n"):
            verb = line.split(" ", 1)[0].upper()
            if verb in ("EHLO", "HELO"):
                self.reply("250 sink")
            elif verb == "RCPT":
                recipients.append(line.split(":", 1)[1].strip(" <>"))
                self.reply("250 ok")
            elif verb == "DATA":
                self.reply("354 go on")
                data = []
                while (chunk := self.rfile.readline().decode(errors="replace")) not in (
                    ".\r\n",
                    "",
                ):
                    data.append(chunk)
                self.recorder.mails.append((recipients, "".join(data)))
                self.reply("250 queued")
            elif verb == "QUIT":
                self.reply("221 bye")
                return
            else:  # MAIL, RSET, NOOP
                self.reply("250 ok")


@pytest.fixture(scope="module")
def recorder() -> Iterator[Recorder]:
    found = Recorder()
    WebhookHandler.recorder = SmtpHandler.recorder = found
    servers: list[socketserver.BaseServer] = [
        ThreadingHTTPServer(("127.0.0.1", PORTS["webhook"]), WebhookHandler),
        ThreadingHTTPServer(("127.0.0.1", PORTS["target"]), WebhookHandler),
        socketserver.ThreadingTCPServer(("127.0.0.1", PORTS["smtp"]), SmtpHandler),
    ]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield found
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


@pytest.fixture(scope="module")
def alertmanager(tmp_path_factory: pytest.TempPathFactory, recorder: Recorder) -> Iterator[Server]:
    """The real Alertmanager on the configuration the entrypoint renders (short grouping)."""
    work = tmp_path_factory.mktemp("alertmanager")
    config = work / "alertmanager.yml"
    timing = {"ALERT_GROUP_WAIT": "1s", "ALERT_GROUP_INTERVAL": "1s"}
    result = render(config, alert_env(**timing))
    assert result.returncode == 0, result.stderr
    address = f"127.0.0.1:{PORTS['alertmanager']}"
    argv = [alertmanager_binary(), f"--config.file={config}", f"--storage.path={work / 'data'}"]
    argv += [f"--web.listen-address={address}", "--cluster.listen-address="]
    server = start("alertmanager", argv, work)
    try:
        wait_http(server, f"http://{address}/-/ready")
        yield server
    finally:
        server.stop()


def every_second(config: str) -> str:
    """The rendered prometheus.yml with 1 s scrapes and rule evaluations instead of 5 s: the
    alert needs two scrapes of the counter and an evaluation, which this makes seconds shorter
    (the rules, targets and routing are the project's as rendered)."""
    intervals = {
        "scrape_interval: 5s": "scrape_interval: 1s",
        "scrape_timeout: 4s": "scrape_timeout: 1s",
        "evaluation_interval: 5s": "evaluation_interval: 1s",
    }
    for old, new in intervals.items():
        assert config.count(old) == 1, old
        config = config.replace(old, new)
    return config


@pytest.fixture(scope="module")
def alerting_prometheus(
    tmp_path_factory: pytest.TempPathFactory, alertmanager: Server
) -> Iterator[Server]:
    """The real Prometheus on the project's files: the fake replica, Alertmanager, itself."""
    work = tmp_path_factory.mktemp("alerting-prometheus")
    address = f"127.0.0.1:{PORTS['prometheus']}"
    values = {
        **compose_values(app_replicas=1),
        "APP_DNS_SD": [],
        "APP_STATIC_TARGETS": [{"targets": [f"127.0.0.1:{PORTS['target']}"]}],
        "TRAEFIK_METRICS_TARGETS": [],
        "PROMETHEUS_SELF_TARGETS": [address],
        "ALERTMANAGER_TARGETS": [f"127.0.0.1:{PORTS['alertmanager']}"],
    }
    render_tree(work / "config", values)
    config = work / "config" / "prometheus" / "prometheus.yml"
    config.write_text(every_second(config.read_text()))
    argv = [require_binary("prometheus")]
    argv += [f"--config.file={config}"]
    argv += [f"--storage.tsdb.path={work / 'tsdb'}", f"--web.listen-address={address}"]
    server = start("prometheus-alerting", argv, work)
    try:
        wait_http(server, f"http://{address}/-/ready")
        yield server
    finally:
        server.stop()


def delivered(recorder: Recorder, alertname: str) -> list[dict]:
    return [
        alert
        for message in recorder.webhook
        for alert in message["alerts"]
        if alert["labels"]["alertname"] == alertname and alert["status"] == "firing"
    ]


def test_a_firing_rule_reaches_the_webhook_and_the_mailbox_through_alertmanager(
    recorder: Recorder, alertmanager: Server, alerting_prometheus: Server
) -> None:
    target = f"127.0.0.1:{PORTS['target']}"
    wait_until(
        lambda: bool(delivered(recorder, "KeyLookupsUnavailable")),
        "KeyLookupsUnavailable at the webhook",
        timeout=240,
    )
    (alert, *_) = delivered(recorder, "KeyLookupsUnavailable")
    assert alert["labels"]["instance"] == target and alert["labels"]["severity"] == "critical"
    assert target in alert["annotations"]["summary"]
    assert recorder.webhook_paths[0] == f"/hook?token={WEBHOOK_TOKEN}"
    wait_until(
        lambda: any("KeyLookupsUnavailable" in body for _, body in recorder.mails),
        "the same alert by e-mail",
        timeout=240,
    )
    recipients, _ = next(m for m in recorder.mails if "KeyLookupsUnavailable" in m[1])
    assert recipients == ["oncall@example.com"]
    # Secrets stay out of both logs; Alertmanager's API masks the SMTP password (the webhook URL
    # it shows: compose lets only Prometheus reach it).
    status = http_get(f"http://127.0.0.1:{PORTS['alertmanager']}/api/v2/status")[1].decode()
    assert "smtp_auth_password: <secret>" in status and "pw-" not in status
    for text in (alertmanager.output(), alerting_prometheus.output()):
        assert WEBHOOK_TOKEN not in text and "pw-" not in text


@pytest.fixture(scope="module")
def flushing_replica(app_env: dict[str, str], e2e_dir: Path) -> Iterator[Replica]:
    """A third replica as compose runs them: the usage flusher on (every second)."""
    replica = start_replica(3, {**app_env, "RATELIMIT_FLUSH_SECONDS": "1"}, e2e_dir)
    try:
        wait_http(replica.server, f"{replica.url}/readyz", timeout=300, Host="localhost")
        yield replica
    finally:
        replica.server.stop()


def sample(text: str, series: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(f"{series} "):
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.mark.django_db
def test_every_rule_reads_a_metric_that_is_really_exported(
    stack: Stack, flushing_replica: Replica, alertmanager: Server
) -> None:
    def app_metrics() -> str:
        return http_get(f"{flushing_replica.url}/metrics")[1].decode()

    ok = 'ratelimit_flushes_total{result="ok"}'
    wait_until(lambda: (sample(app_metrics(), ok) or 0) > 0, "a successful flush", timeout=120)
    app = app_metrics()
    # A ready replica reads 1 (the model process's gauges do not join the server's).
    assert sample(app, "inference_model_ready") == 1
    exposed = {
        "app": exposed_names(app),
        "traefik": exposed_names(http_get(f"{stack.internal}/traefik/metrics")[1].decode()),
        "alertmanager": exposed_names(
            http_get(f"http://127.0.0.1:{PORTS['alertmanager']}/metrics")[1].decode()
        ),
    }
    for rule in rules():
        for name in metric_names(rule["expr"]) - {"up"}:
            source = name.split("_", 1)[0] if name.split("_", 1)[0] in exposed else "app"
            assert name in exposed[source], (rule["alert"], name, source)
