"""WebSocket routes, mounted by console/asgi.py."""

from django.urls import path

from inference.consumers import CompletionConsumer

websocket_urlpatterns = [
    # Django's stubs type path()'s view as a Django view; channels routes ASGI apps with it.
    path("ws/v1/completions", CompletionConsumer.as_asgi()),  # type: ignore[arg-type]
]
