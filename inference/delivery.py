# Reads private Twisted and daphne state (a transport's dataBuffer/offset/_tempDataLen, daphne's
# connections): tests/test_upstream_mirrors.py fails when the installed release changes it.
"""Did a streamed piece really reach the client's connection?

A client that drops a stream is billed for what reached its connection, no more: the tokens in
the pieces the kernel took before the node learned the connection was gone. Daphne drops
writes to a closed connection silently, and Twisted keeps written data in its own buffer until
the socket is writable, dropping it too if the connection is lost first. So after a piece is
sent we wait until Twisted's buffer for the connection is empty (the kernel has the bytes, and
a peer that half-closed still receives them) or the connection is gone (then the piece, still
buffered, is lost). This ASGI wrapper puts that probe into the scope (`scope["delivery_probe"]`).
Under other servers the probe is absent and every piece counts as delivered.
"""

import asyncio
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from functools import partial
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]  # an ASGI event, received or sent
PROBE_KEY = "delivery_probe"
MAX_WAIT_STEP = 0.01  # seconds between checks of a buffer the client is slow to read


class Probe:
    """Questions about one daphne connection: is it open, has its output been flushed."""

    def __init__(self, is_open: Callable[[], bool], transport: Callable[[], object]) -> None:
        self.is_open = is_open
        self._transport = transport

    def buffered(self) -> int:
        # Twisted's FileDescriptor: written bytes not yet handed to the kernel.
        transport = self._transport()
        data = getattr(transport, "dataBuffer", b"")
        return len(data) - getattr(transport, "offset", 0) + getattr(transport, "_tempDataLen", 0)

    async def flushed(self) -> bool:
        """After a send: True once its bytes are in the kernel, False if they never will be."""
        # Checked before any await: closed now means daphne dropped the write outright.
        if not self.is_open():
            return False
        step = 0.0
        while self.buffered() > 0:
            # Lost with bytes still in Twisted's buffer: those bytes are dropped with it.
            if getattr(self._transport(), "disconnected", False):
                return False
            await asyncio.sleep(step)
            step = min(MAX_WAIT_STEP, step * 2 or 0.0005)
        return True


def _daphne_probe(send: Callable[..., Awaitable[None]]) -> Probe | None:
    # Daphne passes send=partial(server.handle_reply, protocol); anything else: unknown server.
    if not isinstance(send, partial) or not send.args:
        return None
    server, protocol = getattr(send.func, "__self__", None), send.args[0]
    connections = getattr(server, "connections", None)
    if not isinstance(connections, dict):
        return None

    def is_open() -> bool:
        info = connections.get(protocol)
        if info is None or info.get("disconnected"):
            return False
        if hasattr(protocol, "channel"):  # HTTP: twisted.web Request
            return protocol.channel is not None and not getattr(protocol, "finished", False)
        return getattr(protocol, "state", None) == getattr(protocol, "STATE_OPEN", object())

    def transport() -> object:
        channel = getattr(protocol, "channel", None)
        return getattr(channel if channel is not None else protocol, "transport", None)

    return Probe(is_open, transport)


class Delivery:
    """Per stream: after each piece is sent, was it delivered?"""

    def __init__(self, scope: Mapping[str, Any] | None) -> None:
        self.probe: Probe | None = None if scope is None else scope.get(PROBE_KEY)

    async def sent(self) -> bool:
        """Wait until the last piece is in the kernel (True) or will never be (False)."""
        return True if self.probe is None else await self.probe.flushed()

    def sent_so_far(self) -> bool:
        """Without waiting: is nothing left in the server's buffer? (For a wait cut short.)"""
        return self.probe is None or self.probe.buffered() <= 0

    def is_open(self) -> bool:
        """Is the client's connection still open? (True under servers without a probe.)"""
        return self.probe is None or self.probe.is_open()


class NotStreamed(Delivery):
    """A response sent whole at the end: no piece counts as delivered on its own."""

    def __init__(self) -> None:
        super().__init__(None)

    async def sent(self) -> bool:
        return False

    def sent_so_far(self) -> bool:
        return False


class DeliveryProbe:
    """ASGI middleware adding the connection probe to HTTP and WebSocket scopes."""

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.app = app

    async def __call__(
        self,
        scope: Scope,
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
    ) -> None:
        probe = _daphne_probe(send)
        if probe is not None:
            scope = {**scope, PROBE_KEY: probe}
        await self.app(scope, receive, send)
