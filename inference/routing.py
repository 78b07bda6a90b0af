"""WebSocket routes, mounted by console/asgi.py."""

websocket_urlpatterns: list = []
