"""Console-side writes that are not tenant or key changes (those live in tenants.services)."""

from django.core.cache import cache

# Long enough to outlive any tab left open on a token page.
ONCE_SECONDS = 24 * 3600


def submission_claim(*, once: str) -> bool:
    """Claim a form's one-time value; False when it was used before (a reload, a double click)."""
    # cache.add is SET NX on Redis: of two concurrent posts of the same form, exactly one wins,
    # whichever process serves it.
    return bool(once) and cache.add(f"console:once:{once}", 1, timeout=ONCE_SECONDS)
