"""Glue between the API and the engine."""

from django.conf import settings


def model_status() -> dict:
    """The model's readiness for /readyz: ok, state and a human reason."""
    return {
        "ok": False,
        "state": "not_loaded",
        "model": settings.INFERENCE_MODEL,
        "detail": "the inference engine is not started in this process",
    }
