"""The upstream code that console/handlers.py copies and inference/delivery.py reads, pinned.

ApiHandler (console/handlers.py) re-implements Django's ASGIHandler.__call__ and .handle and
BaseHandler.load_middleware and .get_response_async, over private parts: _middleware_chain,
_get_response_async and a response's _resource_closers. The delivery probe (inference/delivery.py)
reads Twisted's write buffer (dataBuffer, offset, _tempDataLen, disconnected), twisted.web's
Request.channel and .transport, and daphne's Server.connections through the partial daphne passes
as `send`. None of that is public API: any release may change it without a word.

So each such function's source is hashed (sha256 of its dedented lines, first 16 hex digits) and
compared with the hash recorded for the installed release series (5.2.19 is series 5.2); the
attributes we read are also checked on real objects. A failure names the piece and our code to
re-read. To admit a new series: `pip download --no-deps NAME==X -d DIR` for each of its releases,
re-read our code against the changed sources, record what
`python -m tests.test_upstream_mirrors DIR/*.whl` prints, and move the range in pyproject.toml
(test_pyproject_admits_exactly_the_recorded_series keeps the two equal).

Recorded from the wheels of every release of each series: Django 5.2-5.2.19 and 6.0-6.0.10
(6.1 changes ASGIHandler.handle), Twisted 22.4.0-26.10.0, daphne 4.1.0-4.2.3.
"""

# daphne.server first: importing it installs Twisted's asyncio reactor, as it must come first.
from daphne.server import Server  # isort: skip

import ast
import asyncio
import hashlib
import importlib
import importlib.metadata
import inspect
import socket
import sys
import textwrap
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from daphne.http_protocol import WebRequest
from daphne.ws_protocol import WebSocketProtocol
from django.core import signals
from django.core.handlers.asgi import ASGIHandler
from django.http import HttpResponse
from packaging.requirements import Requirement
from twisted.internet import tcp
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.python.failure import Failure
from twisted.web import http

from console.handlers import ApiHandler
from inference.delivery import Probe, _daphne_probe

ROOT = Path(__file__).resolve().parent.parent
NAMES = {"django": "Django", "twisted": "Twisted", "daphne": "daphne"}

# The release series recorded for each distribution (no other release exists between them).
DJANGO = ("5.2", "6.0")
TWISTED: tuple[str, ...] = (
    "22.4",
    "22.8",
    "22.10",
    "23.8",
    "23.10",
    "24.3",
    "24.7",
    "24.10",
    "24.11",
    "25.5",
)
TWISTED += ("26.4", "26.10")
DAPHNE = ("4.1", "4.2")
SERIES = {"django": DJANGO, "twisted": TWISTED, "daphne": DAPHNE}


@dataclass(frozen=True)
class Piece:
    """One upstream function we copy, or whose private effects we read, and who relies on it."""

    dist: str
    module: str
    qualname: str
    ours: str  # what to re-read when it changes
    hashes: dict[str, tuple[str, ...]]  # source hash -> the release series with that source


HANDLERS = "console/handlers.py (ApiHandler)"
DELIVERY = "inference/delivery.py (Probe, _daphne_probe)"
PIECES = (
    # Copied: ApiHandler overrides these with the same steps, minus the thread hops.
    Piece("django", "django.core.handlers.asgi", "ASGIHandler.__call__", HANDLERS,
          {"f8a6648e9fd753bd": DJANGO}),
    Piece("django", "django.core.handlers.asgi", "ASGIHandler.handle", HANDLERS,
          {"603c1f71c4bd0d63": DJANGO}),
    # 6.0 rewraps the docstring only.
    Piece("django", "django.core.handlers.base", "BaseHandler.load_middleware", HANDLERS,
          {"357782b459364e44": ("5.2",), "825594cfde3cc8f9": ("6.0",)}),
    Piece("django", "django.core.handlers.base", "BaseHandler.get_response_async", HANDLERS,
          {"88aec41ae42afaa9": DJANGO}),
    # Read: the chain's innermost handler (it reads the middleware lists load_middleware sets),
    # and close(), which handle() relies on to run the resource closers, then request_finished.
    Piece("django", "django.core.handlers.base", "BaseHandler._get_response_async", HANDLERS,
          {"f2b64ada9563d036": DJANGO}),
    Piece("django", "django.http.response", "HttpResponseBase.close", HANDLERS,
          {"d7658ccb0c5cf25a": DJANGO}),
    # Read: the transport's buffer, kept by these (26.4 changes the type hints of __init__;
    # 24.11 joins the list buffer more cheaply in doWrite: the same counts either way).
    Piece("twisted", "twisted.internet.abstract", "FileDescriptor.__init__", DELIVERY,
          {"d9791579b103b9c1": TWISTED[:10], "aae6fa5bd10132e4": TWISTED[10:]}),
    Piece("twisted", "twisted.internet.abstract", "FileDescriptor.write", DELIVERY,
          {"3b7ad3ee32b1e98d": TWISTED}),
    Piece("twisted", "twisted.internet.abstract", "FileDescriptor.writeSequence", DELIVERY,
          {"ea8e512e7746e70f": TWISTED}),
    Piece("twisted", "twisted.internet.abstract", "FileDescriptor.doWrite", DELIVERY,
          {"95dd2f11c05f305a": TWISTED[:8], "e8b611d2a2b6eba0": TWISTED[8:]}),
    Piece("twisted", "twisted.internet.abstract", "FileDescriptor.connectionLost", DELIVERY,
          {"e30c27a4307995c2": TWISTED}),
    # Read: a request's channel, gone once it is finished or lost. (Request.__init__, which
    # sets channel and transport, changes its type hints every other release: checked below.)
    Piece("twisted", "twisted.web.http", "Request.finish", DELIVERY,
          {"269cf45bb661f4a5": TWISTED}),
    Piece("twisted", "twisted.web.http", "Request._cleanup", DELIVERY,
          {"9d68bffca3993e0b": TWISTED}),
    Piece("twisted", "twisted.web.http", "Request.connectionLost", DELIVERY,
          {"13011d4bba003286": TWISTED}),
    # Read: send is partial(server.handle_reply, protocol), over server.connections.
    Piece("daphne", "daphne.server", "Server.create_application", DELIVERY,
          {"f0d825d087ae800e": DAPHNE}),
    Piece("daphne", "daphne.server", "Server.protocol_connected", DELIVERY,
          {"7f0ecbb971d4004f": DAPHNE}),
    Piece("daphne", "daphne.server", "Server.protocol_disconnected", DELIVERY,
          {"1019ed0e295ddb49": DAPHNE}),
    Piece("daphne", "daphne.server", "Server.handle_reply", DELIVERY,
          {"8ba40d9d5e24d440": DAPHNE}),
)  # fmt: skip


def source_of(module_text: str, qualname: str) -> tuple[int, str]:
    """The first line (decorators included) and the dedented source of a def in a module."""
    body: list[ast.stmt] = ast.parse(module_text).body
    node: ast.stmt | None = None
    for name in qualname.split("."):
        node = next((n for n in body if getattr(n, "name", None) == name), None)
        if not isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            raise LookupError(f"no def {qualname} in this module")
        body = node.body
    assert node is not None and node.end_lineno is not None
    first = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
    lines = module_text.splitlines()[first - 1 : node.end_lineno]
    return first, textwrap.dedent("\n".join(line.rstrip() for line in lines))


def digest(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def series_of(version: str) -> str:
    """5.2.19 -> 5.2; 26.10.0 -> 26.10 (a pre-release stays its own series: 6.1a1 -> 6.1a1)."""
    return ".".join(version.split(".")[:2])


def installed(dist: str) -> tuple[str, str]:
    version = importlib.metadata.version(dist)
    return version, series_of(version)


def unrecorded(dist: str) -> str:
    version, series = installed(dist)
    return (
        f"No hashes are recorded for {NAMES[dist]} {version} (series {series}; recorded: "
        f"{', '.join(SERIES[dist])}). Re-read what it mirrors against its source, then record "
        "it (see this module's docstring) or install a recorded series."
    )


@pytest.mark.parametrize("dist", SERIES)
def test_the_installed_release_series_is_recorded(dist: str) -> None:
    if installed(dist)[1] not in SERIES[dist]:
        pytest.fail(unrecorded(dist))


@pytest.mark.parametrize("piece", PIECES, ids=lambda p: f"{p.module}:{p.qualname}")
def test_a_mirrored_upstream_function_is_unchanged(piece: Piece) -> None:
    version, series = installed(piece.dist)
    module = importlib.import_module(piece.module)
    first, source = source_of(inspect.getsource(module), piece.qualname)
    live: Any = module
    for name in piece.qualname.split("."):
        live = vars(live)[name]  # defined right there, not inherited
    # The def we hashed is the one Python runs.
    assert inspect.unwrap(live).__code__.co_firstlineno == first, piece.qualname
    if series not in SERIES[piece.dist]:
        pytest.fail(f"{unrecorded(piece.dist)} (Here: {piece.qualname}, for {piece.ours}.)")
    recorded = next(h for h, where in piece.hashes.items() if series in where)
    if digest(source) != recorded:
        pytest.fail(
            f"{NAMES[piece.dist]} {version} changed {piece.module}.{piece.qualname} (sha256 "
            f"{digest(source)}, recorded {recorded} for {series}). Re-read {piece.ours} "
            "against it, then record the new hash (see this module's docstring)."
        )


@pytest.mark.parametrize("dist", SERIES)
def test_every_piece_records_each_series_once(dist: str) -> None:
    for piece in (p for p in PIECES if p.dist == dist):
        listed = [series for where in piece.hashes.values() for series in where]
        assert sorted(listed) == sorted(SERIES[dist]), piece.qualname


def next_series(series: str) -> str:
    major, minor = series.split(".")
    return f"{major}.{int(minor) + 1}"


@pytest.mark.parametrize("dist", SERIES)
def test_pyproject_admits_exactly_the_recorded_series(dist: str) -> None:
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    specifier = next(r.specifier for r in map(Requirement, dependencies) if r.name.lower() == dist)
    expected = f">={SERIES[dist][0]},<{next_series(SERIES[dist][-1])}"
    assert {str(s) for s in specifier} == set(expected.split(",")), (
        f"pyproject.toml admits {dist}{specifier} but the hashes here cover "
        f"{', '.join(SERIES[dist])}: make it {dist}{expected}"
    )


# Django, on real objects.


def test_api_handler_sets_everything_the_stock_load_middleware_sets() -> None:
    missing = set(vars(ASGIHandler())) - set(vars(ApiHandler()))
    assert not missing, f"Django's handler now sets {missing}: console/handlers.py does not"


# request_finished runs Django's close_old_connections, which asks a connection opened by an
# earlier test in this process (the order differs under pytest-xdist) about its state.
@pytest.mark.django_db
def test_closing_a_response_runs_its_resource_closers_then_request_finished() -> None:
    response, events = HttpResponse(), []
    # Private, so not in the type stubs: reached by name.
    getattr(response, "_resource_closers").append(lambda: events.append("closer"))  # noqa: B009

    def finished(**kwargs: object) -> None:
        events.append("request_finished")

    signals.request_finished.connect(finished)
    try:
        response.close()
    finally:
        signals.request_finished.disconnect(finished)
    assert events == ["closer", "request_finished"]


# Twisted, on a real TCP transport (the class daphne's connections get) over a socket pair.


@pytest.fixture
def transport() -> Iterator[tuple[tcp.Server, socket.socket]]:
    ours, peer = socket.socketpair()
    peer.setblocking(False)
    # Loosely typed: a test reactor, and no listening port behind the connection.
    args: tuple[Any, ...] = (ours, Protocol(), ("127.0.0.1", 1), None, 0, MemoryReactor())
    server = tcp.Server(*args)
    yield server, peer
    if not server.disconnected:
        server.connectionLost(Failure(ConnectionError("test over")))
    peer.close()


def drain(peer: socket.socket) -> int:
    """Everything the kernel holds for the peer, read now: how many bytes."""
    count = 0
    while True:
        try:
            chunk = peer.recv(1 << 20)
        except BlockingIOError:
            return count
        count += len(chunk)


def test_twisted_buffer_counts_the_written_bytes_not_yet_in_the_kernel(
    transport: tuple[tcp.Server, socket.socket],
) -> None:
    server, peer = transport
    probe = Probe(lambda: True, lambda: server)
    payload = 4 << 20  # far more than a socket pair's buffers: some must wait in Twisted's
    server.write(b"x" * (payload // 2))
    server.writeSequence([b"y" * (payload // 4)] * 2)
    assert (server.dataBuffer, server._tempDataLen) == (b"", payload)
    assert probe.buffered() == payload
    received, saw_offset = 0, False
    while probe.buffered() > 0:
        server.doWrite()
        saw_offset = saw_offset or server.offset > 0
        received += drain(peer)
        # Unix sockets hand written bytes straight to the peer: nothing is in flight between.
        assert received + probe.buffered() == payload
    assert saw_offset and received == payload


async def test_a_lost_transport_is_disconnected_with_its_buffer_dropped(
    transport: tuple[tcp.Server, socket.socket],
) -> None:
    server, _ = transport
    probe = Probe(lambda: True, lambda: server)
    server.write(b"x" * 1000)
    assert not server.disconnected
    server.connectionLost(Failure(ConnectionError("peer reset")))
    assert server.disconnected and probe.buffered() == 1000
    assert await probe.flushed() is False


class CapturedRequest(http.Request):
    """A twisted.web request (daphne's WebRequest is one) that keeps itself for the test."""

    made: list["CapturedRequest"] = []

    def process(self) -> None:
        self.made.append(self)


def request_on(transport: StringTransport) -> CapturedRequest:
    channel = http.HTTPChannel()
    channel.timeOut = None  # no timer: the test runs no reactor
    channel.requestFactory = CapturedRequest
    channel.makeConnection(transport)
    channel.dataReceived(b"GET /v1/completions HTTP/1.1\r\nHost: node\r\n\r\n")
    return CapturedRequest.made.pop()


def test_a_twisted_web_request_keeps_its_transport_after_its_channel_goes() -> None:
    assert issubclass(WebRequest, http.Request)
    finished, lost = request_on(StringTransport()), request_on(StringTransport())
    transports = finished.channel.transport, lost.channel.transport
    assert (finished.transport, lost.transport) == transports and not finished.finished
    finished.finish()
    lost.channel.connectionLost(Failure(ConnectionError("peer reset")))
    assert finished.finished and getattr(finished, "channel", None) is None
    assert lost.channel is None
    assert (finished.transport, lost.transport) == transports


def test_daphne_websockets_have_an_open_state_and_no_channel() -> None:
    assert WebSocketProtocol.STATE_OPEN != WebSocketProtocol.STATE_CLOSED
    assert not hasattr(WebSocketProtocol, "channel")


# daphne, on a real (never started) Server.


async def test_daphnes_send_leads_the_probe_to_the_connection() -> None:
    sends: list[object] = []

    async def application(scope: dict, receive: object, send: object) -> None:
        sends.append(send)

    server = Server(application, endpoints=["tcp:port=0"])
    server.connections = {}  # as run() sets it
    request = request_on(StringTransport())
    server.protocol_connected(request)
    server.create_application(request, {"type": "http"})
    await asyncio.sleep(0)
    probe = _daphne_probe(sends[0])  # type: ignore[arg-type]
    assert probe is not None and probe.is_open()
    assert probe._transport() is request.channel.transport
    server.protocol_disconnected(request)
    assert not probe.is_open()
    # Daphne drops a write to a closed connection without a word (the request has no
    # handle_reply: reaching it would raise).
    await sends[0]({"type": "http.response.body", "body": b"lost"})  # type: ignore[operator]


def record(wheels: list[str]) -> None:
    """Print each piece's hashes in the given release wheels, as PIECES records them."""
    for piece in PIECES:
        path = piece.module.replace(".", "/") + ".py"
        seen: dict[str, dict[str, str]] = {}  # source hash -> release -> its series
        for wheel in wheels:
            with zipfile.ZipFile(wheel) as archive:
                if path not in archive.namelist():
                    continue
                text = archive.read(path).decode()
            version = Path(wheel).name.split("-")[1]
            hash_ = digest(source_of(text, piece.qualname)[1])
            seen.setdefault(hash_, {})[version] = series_of(version)
        print(f"{piece.module}:{piece.qualname}")
        for hash_, releases in seen.items():
            series = tuple(dict.fromkeys(releases.values()))
            print(f'    "{hash_}": {series},  # {" ".join(releases)}')
        listed = [s for releases in seen.values() for s in set(releases.values())]
        if split := sorted({s for s in listed if listed.count(s) > 1}):
            print(f"    !! releases within {split} differ: a series is recorded as one")


if __name__ == "__main__":
    record(sys.argv[1:])
