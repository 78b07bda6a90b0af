"""WebSocket routes, mounted by console/asgi.py."""

from django.urls import path

from inference.consumers import CompletionConsumer

websocket_urlpatterns = [
    path("ws/v1/completions", CompletionConsumer.as_asgi()),
]
