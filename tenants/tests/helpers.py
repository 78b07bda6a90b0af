"""Helpers shared by the tenants tests."""

from tenants.auth import authenticate_token
from tenants.keycache import KeyRecord


async def record_of(token: str) -> KeyRecord:
    """The key record a token authenticates as; the test fails if it authenticates as none."""
    record = await authenticate_token(token)
    assert record is not None, "the token does not authenticate"
    return record
