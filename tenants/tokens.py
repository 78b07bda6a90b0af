"""API token format and hashing: `<prefix>_<key_id>_<secret>`.

The key_id is public and stable through rotation; the secret is at least 32 random base62
characters, shown once, and stored only as HMAC-SHA256 under the server's pepper.
"""

import hashlib
import hmac
import secrets
import string

from django.conf import settings

BASE62 = string.ascii_letters + string.digits
KEY_ID_LENGTH = 12
SECRET_LENGTH = 40


def _random_base62(length: int) -> str:
    return "".join(secrets.choice(BASE62) for _ in range(length))


def new_key_id() -> str:
    return _random_base62(KEY_ID_LENGTH)


def new_secret() -> str:
    return _random_base62(SECRET_LENGTH)


def hash_secret(secret: str, pepper: str) -> str:
    return hmac.new(pepper.encode(), secret.encode(), hashlib.sha256).hexdigest()


def format_token(prefix: str, key_id: str, secret: str) -> str:
    return f"{prefix}_{key_id}_{secret}"


def parse_token(token: str, prefix: str | None = None) -> tuple[str, str] | None:
    """(key_id, secret) from a token, or None when it is not shaped like one of ours: our
    prefix (API_KEY_PREFIX unless given), a 12-character key_id, a base62 secret."""
    prefix = settings.API_KEY_PREFIX if prefix is None else prefix
    text = token.strip()
    if not text.startswith(f"{prefix}_"):
        return None
    # Cut after the prefix, not at every "_": a prefix such as "sk_live" is still one prefix.
    key_id, sep, secret = text[len(prefix) + 1 :].partition("_")
    if not sep or len(key_id) != KEY_ID_LENGTH or len(secret) < 32:
        return None
    if not (_is_base62(key_id) and _is_base62(secret)):
        return None
    return key_id, secret


def _is_base62(value: str) -> bool:
    return all(ch in BASE62 for ch in value)


def secret_matches(secret: str, pepper: str, *hashes: str) -> bool:
    """Constant-time comparison of the secret's HMAC against each non-empty stored hash."""
    candidate = hash_secret(secret, pepper)
    matched = False
    for stored in hashes:
        # Compare against every hash, not stopping at the first match, so timing says nothing.
        if stored and hmac.compare_digest(candidate, stored):
            matched = True
    return matched
