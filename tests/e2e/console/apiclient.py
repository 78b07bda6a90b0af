"""The node's API as a tenant's program calls it during the browser journey (plain urllib, so
every status and header is seen as sent), with a tally of what the node answered."""

import json
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")


@dataclass
class Answer:
    """One API response: status, headers (lower-case names) and the JSON body."""

    status: int
    headers: dict[str, str]
    body: dict


@dataclass
class NodeApi:
    """POST /v1/completions and GET /v1/models on the live server; `tally` counts the
    completions' statuses."""

    base_url: str
    model: str
    tally: Counter = field(default_factory=Counter)

    def _send(self, request: urllib.request.Request) -> Answer:
        try:
            with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
                status, headers, raw = response.status, response.headers, response.read()
        except urllib.error.HTTPError as error:
            status, headers, raw = error.code, error.headers, error.read()
        lowered = {name.lower(): value for name, value in headers.items()}
        return Answer(status, lowered, json.loads(raw or b"{}"))

    def complete(self, token: str, **params: object) -> Answer:
        """One short completion (params override the defaults; e.g. a bad value)."""
        body = {"model": self.model, "prompt": "Say hi.", "max_tokens": 2, "temperature": 0}
        request = urllib.request.Request(  # noqa: S310 - loopback only
            f"{self.base_url}/v1/completions",
            data=json.dumps({**body, **params}).encode(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            method="POST",
        )
        answer = self._send(request)
        self.tally[answer.status] += 1
        return answer

    def models_status(self, token: str) -> int:
        """GET /v1/models: an authenticated call that admits and counts nothing."""
        request = urllib.request.Request(  # noqa: S310 - loopback only
            f"{self.base_url}/v1/models", headers={"Authorization": f"Bearer {token}"}
        )
        return self._send(request).status


def wait_until(check: Callable[[], T | None], timeout: float, interval: float = 0.1) -> T:
    """Call `check` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s: {check}")
        time.sleep(interval)
