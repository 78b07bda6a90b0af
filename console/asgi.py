"""ASGI entry point for daphne: Django for HTTP, channels' router for WebSockets."""

import os
from collections.abc import Awaitable, Callable

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402
from django.core.asgi import get_asgi_application  # noqa: E402

# Django must be set up before anything imports models (the routing module does).
django_application = get_asgi_application()

from inference.delivery import DeliveryProbe  # noqa: E402
from inference.routing import websocket_urlpatterns  # noqa: E402
from ratelimit.flush import start_flusher  # noqa: E402
from tenants.keycache import preload_in_background  # noqa: E402

# Usage counters and the 429 audit go from Redis to Postgres in batches, from a daemon thread.
start_flusher()
# Clients' keys are known before Postgres next goes away (tenants/keycache.py).
preload_in_background()

# Each layer below wraps the one before: ASGI apps all, of different classes.
http_application: Callable[..., Awaitable[None]] = django_application
if settings.SERVE_STATIC:
    from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

    # Daphne serves no files; this serves collected /static/ for the console and the docs.
    http_application = ASGIStaticFilesHandler(django_application)

from console.handlers import ApiHandler, PathDispatcher  # noqa: E402

# The API paths skip the console's sync middleware and per-request threads (console/handlers.py).
http_application = PathDispatcher(ApiHandler(), http_application)

from console.fastpath import CachedRefusals  # noqa: E402

# A key refused in process (the denial cache) gets its 429 before ninja and the parts of
# Django's request cycle that only a view needs (console/fastpath.py).
http_application = CachedRefusals(http_application)

from console.bodylimit import BodyLimitMiddleware  # noqa: E402
from console.metrics import MetricsEndpoint  # noqa: E402

# /metrics before Django: Prometheus scrapes by IP, which ALLOWED_HOSTS would refuse.
http_application = MetricsEndpoint(http_application)

from console.readiness import ReadinessEndpoint  # noqa: E402

# /readyz before Django, from the model's state and the last background dependency checks:
# a replica busy serving must pass its health checks (console/readiness.py).
http_application = ReadinessEndpoint(http_application)

# 413 past MAX_BODY_BYTES while the body arrives (Traefik does not cap the streaming paths).
http_application = BodyLimitMiddleware(http_application, settings.DATA_UPLOAD_MAX_MEMORY_SIZE)

# Outermost, so it sees the server's own send(): streams bill only what reached the client.
application = DeliveryProbe(
    ProtocolTypeRouter(
        {
            "http": http_application,
            # types-channels wants its own URLPattern subclass, which Django's path() never returns.
            "websocket": URLRouter(websocket_urlpatterns),  # type: ignore[arg-type]
        }
    )
)

from engine.model import settle_heap  # noqa: E402

# What the imports above made lives as long as the process (about 440,000 objects): set aside
# from the cyclic collector, whose full collections walked them all, 180-200 ms in which the
# event loop answered nothing (measured; engine/model.py's settle_heap).
settle_heap()

if settings.INFERENCE_AUTOLOAD:
    from inference.engines import start_engine

    # Here, not in AppConfig.ready() (which also runs for migrate and tests): the model loads
    # on its own thread while the server starts; /readyz says 503 until it is ready.
    start_engine()
