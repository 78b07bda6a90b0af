"""Settings for the inference node.

This is the only module that reads the environment. Every setting has a default that runs on
one machine (SQLite, an in-process Redis emulation, the in-memory channel layer); the system
checks in console/checks.py refuse the unsafe defaults when DEBUG is off. Every variable is
documented in deploy/.env.example and README.md.
"""

import os
from pathlib import Path
from typing import Any

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from core.redisurl import parse_redis_url

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    return raw.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from exc


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be a number, got {raw!r}") from exc


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_cpus(name: str) -> tuple[int, ...]:
    """A CPU list in taskset's form ("1", "0,2", "2-5") as a sorted tuple; empty: none."""
    cpus: set[int] = set()
    for part in env_list(name, []):
        first, _, last = part.partition("-")
        try:
            low, high = int(first), int(last or first)
        except ValueError:
            low, high = -1, -1
        if low < 0 or high < low:
            raise ValueError(f"{name} must list CPUs like 1 or 0,2 or 2-5; got {part!r}")
        cpus.update(range(low, high + 1))
    return tuple(sorted(cpus))


def env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = env_str(name, default).strip().lower() or default
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
    return value


# Marker values the system checks recognise as "never configured".
INSECURE_SECRET_KEY = "insecure-dev-secret-key-change-me"  # noqa: S105
INSECURE_API_KEY_PEPPER = "insecure-dev-pepper-change-me"

MIN_SECRET_LENGTH = 32


def env_secret(name: str, development_value: str) -> str:
    """A secret: with DEBUG off, loading the settings fails unless it is set (and long enough),
    whatever the entry point (daphne, manage.py, a worker); a system check alone can be skipped."""
    value = env_str(name, "")
    if DEBUG:
        return value or development_value
    if not value or value == development_value or len(value) < MIN_SECRET_LENGTH:
        raise ImproperlyConfigured(
            f"{name} must be set to at least {MIN_SECRET_LENGTH} random characters when DEBUG "
            "is off (the development value is public)."
        )
    return value


DEBUG = env_bool("DEBUG", True)
SECRET_KEY = env_secret("SECRET_KEY", INSECURE_SECRET_KEY)
API_KEY_PEPPER = env_secret("API_KEY_PEPPER", INSECURE_API_KEY_PEPPER)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_prometheus",
    "channels",
    "console",
    "pages",
    "tenants",
    "ratelimit",
    "inference",
]

MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "console.middleware.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "console.metrics.BoundedPrometheusAfterMiddleware",
]

# The API paths (/v1/, /healthz, /readyz) run through console.handlers.ApiHandler with only
# these async middleware; MIDDLEWARE above serves the console and the admin.
API_MIDDLEWARE = [
    # Outermost: every error answer under /v1 is JSON in the OpenAI shape, whatever DEBUG says.
    "console.middleware.ApiJsonErrorsMiddleware",
    "console.middleware.ApiHttpMetricsMiddleware",
    "console.middleware.RequestIdMiddleware",
]

ROOT_URLCONF = "console.urls"
ASGI_APPLICATION = "console.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------
DATABASE_URL = env_str("DATABASE_URL", "")
# Any: dj_database_url's DBConfig in one branch, a plain dict (a Path for NAME) in the other.
DATABASES: dict[str, Any]
if DATABASE_URL:
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=0)}
else:
    DATABASES = {
        "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": BASE_DIR / "db.sqlite3"}
    }
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # psycopg 3's own pool; persistent connections (CONN_MAX_AGE) must stay 0 with it.
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": env_int("DATABASE_POOL_MIN", 1),
        "max_size": env_int("DATABASE_POOL_MAX", 10),
        "timeout": env_float("DATABASE_POOL_TIMEOUT", 5.0),
    }
# Behind PgBouncer in transaction pooling, each transaction may run on another server
# connection: a server-side cursor (QuerySet.iterator()) is gone on the next one, and so is a
# statement psycopg prepared (only with OPTIONS server_side_binding: Django binds on the client
# by default). `pgbouncer` turns both off (docs/deploy.md, "PgBouncer").
DATABASE_POOLER = env_choice("DATABASE_POOLER", "none", ("none", "pgbouncer"))
if DATABASE_POOLER == "pgbouncer" and DATABASES["default"]["ENGINE"].endswith("postgresql"):
    DATABASES["default"]["OPTIONS"]["prepare_threshold"] = None
    DATABASES["default"]["DISABLE_SERVER_SIDE_CURSORS"] = True
# django-prometheus's wrappers of the same backends count connections, queries, errors and
# query time (labels: alias and vendor only). They work with psycopg 3 and its pool.
DATABASES["default"]["ENGINE"] = {
    "django.db.backends.postgresql": "django_prometheus.db.backends.postgresql",
    "django.db.backends.sqlite3": "django_prometheus.db.backends.sqlite3",
}.get(DATABASES["default"]["ENGINE"], DATABASES["default"]["ENGINE"])
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis ----------------------------------------------------------------------------------
# Unset REDIS_URL means the in-process emulation (fakeredis running the real Lua via lupa):
# fine for `make run` on a laptop, refused by a system check when DEBUG is off.
REDIS_URL = env_str("REDIS_URL", "")
REDIS_EMULATED = not REDIS_URL
# The limiter's own pool: short timeouts so an outage costs milliseconds, not seconds.
RATELIMIT_REDIS_URL = env_str("RATELIMIT_REDIS_URL") or REDIS_URL  # empty: the same Redis
# Either URL may name a Sentinel-watched master (redis+sentinel://h:p,h:p/service/db) or a
# Redis Cluster (redis+cluster://h:p,h:p, or REDIS_CLUSTER=1 with redis://); core/redisurl.py.
REDIS_CLUSTER = env_bool("REDIS_CLUSTER", False)
# Parsed now so a malformed URL stops the process at start, not at its first request.
REDIS_TARGET = None if REDIS_EMULATED else parse_redis_url(REDIS_URL, cluster=REDIS_CLUSTER)
if RATELIMIT_REDIS_URL:
    parse_redis_url(RATELIMIT_REDIS_URL, cluster=REDIS_CLUSTER)
RATELIMIT_REDIS_TIMEOUT_MS = env_int("RATELIMIT_REDIS_TIMEOUT_MS", 50)
# Django's cache, on a Redis that may evict (allkeys-lru): nothing there is the only copy.
CACHE_REDIS_URL = env_str("CACHE_REDIS_URL") or REDIS_URL  # empty: the same Redis
RATELIMIT_FAILURE_MODE = env_choice("RATELIMIT_FAILURE_MODE", "local", ("open", "closed", "local"))
# Rate limiter tuning (docs/ratelimit.md explains each one).
RATELIMIT_LEASE_TTL_SECONDS = env_float("RATELIMIT_LEASE_TTL_SECONDS", 60.0)
RATELIMIT_LEASE_RECORD_TTL_SECONDS = env_float("RATELIMIT_LEASE_RECORD_TTL_SECONDS", 900.0)
RATELIMIT_HEARTBEAT_SECONDS = env_float("RATELIMIT_HEARTBEAT_SECONDS", 15.0)
RATELIMIT_MAX_RESERVATION_TOKENS = env_int("RATELIMIT_MAX_RESERVATION_TOKENS", 4096)
RATELIMIT_BREAKER_ERRORS = env_int("RATELIMIT_BREAKER_ERRORS", 5)
RATELIMIT_BREAKER_SECONDS = env_float("RATELIMIT_BREAKER_SECONDS", 2.0)
RATELIMIT_LOCAL_DIVISOR = env_int("RATELIMIT_LOCAL_DIVISOR", 4)
RATELIMIT_IETF_HEADERS = env_bool("RATELIMIT_IETF_HEADERS", False)
RATELIMIT_AUDIT_SAMPLE_ADDRESSES = env_int("RATELIMIT_AUDIT_SAMPLE_ADDRESSES", 5)
RATELIMIT_BUFFER_TTL_SECONDS = env_int("RATELIMIT_BUFFER_TTL_SECONDS", 7 * 86400)
RATELIMIT_FLUSH_SECONDS = env_float("RATELIMIT_FLUSH_SECONDS", 10.0)
# Repeat a Redis requests-per-minute refusal in process until its retry time (denycache.py).
RATELIMIT_DENY_CACHE = env_bool("RATELIMIT_DENY_CACHE", True)
RATELIMIT_LOGIN_ADDRESS_PER_MINUTE = env_int("RATELIMIT_LOGIN_ADDRESS_PER_MINUTE", 20)
# Per username and address; per username from all addresses, a ceiling that slows each address
# to the slowed rate instead of refusing (ratelimit/login.py).
RATELIMIT_LOGIN_PAIR_PER_MINUTE = env_int("RATELIMIT_LOGIN_PAIR_PER_MINUTE", 5)
RATELIMIT_LOGIN_USERNAME_PER_MINUTE = env_int("RATELIMIT_LOGIN_USERNAME_PER_MINUTE", 30)
RATELIMIT_LOGIN_SLOWED_PER_MINUTE = env_int("RATELIMIT_LOGIN_SLOWED_PER_MINUTE", 2)

CACHES: dict[str, dict[str, Any]]
CHANNEL_LAYERS: dict[str, dict[str, Any]]
if REDIS_EMULATED:
    CACHES = {"default": {"BACKEND": "django_prometheus.cache.backends.locmem.LocMemCache"}}
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
else:
    CACHES = {
        "default": {
            # django-redis's RedisCache, counting gets, hits, misses and failures.
            "BACKEND": "django_prometheus.cache.backends.redis.RedisCache",
            "LOCATION": CACHE_REDIS_URL,
            "KEY_PREFIX": "cache",
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 1, "SOCKET_TIMEOUT": 1},
        }
    }
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL], "prefix": "channels"},
        }
    }
    if REDIS_TARGET is not None and REDIS_TARGET.kind == "sentinel":
        # django-redis's Sentinel client: LOCATION names the service, the pool asks the
        # Sentinels for its master on every new connection (so it follows a failover).
        CACHES["default"]["LOCATION"] = f"redis://{REDIS_TARGET.service}/{REDIS_TARGET.db}"
        CACHES["default"]["OPTIONS"].update(
            CLIENT_CLASS="django_redis.client.SentinelClient",
            CONNECTION_FACTORY="django_redis.pool.SentinelConnectionFactory",
            SENTINELS=list(REDIS_TARGET.nodes),
            SENTINEL_KWARGS={"password": REDIS_TARGET.sentinel_password},
            PASSWORD=REDIS_TARGET.password,
        )
        CHANNEL_LAYERS["default"]["CONFIG"]["hosts"] = [
            {
                "sentinels": list(REDIS_TARGET.nodes),
                "master_name": REDIS_TARGET.service,
                "sentinel_kwargs": {"password": REDIS_TARGET.sentinel_password},
                "db": REDIS_TARGET.db,
                "password": REDIS_TARGET.password,
            }
        ]
    elif REDIS_TARGET is not None and REDIS_TARGET.kind == "cluster":
        # django-redis has no cluster client: console/rediscache.py hands it a RedisCluster
        # (the cache's keys are single-key commands; cache.add stays one SET NX).
        CACHES["default"]["OPTIONS"]["CONNECTION_FACTORY"] = (
            "console.rediscache.ClusterConnectionFactory"
        )
        CACHES["default"]["LOCATION"] = [REDIS_URL]  # a list: django-redis splits on commas
        # channels_redis cannot talk to a cluster, and no consumer of this node uses groups
        # (inference/consumers.py: channel_layer_alias "none"): nothing is lost in process.
        CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# --- API keys -------------------------------------------------------------------------------
API_KEY_PREFIX = env_str("API_KEY_PREFIX", "sk")
# Authenticated keys are cached per process for at most this long; revocations and limit
# changes reach every process sooner through the Redis version counter (tenants/keycache.py).
API_KEY_CACHE_SECONDS = env_float("API_KEY_CACHE_SECONDS", 5.0)
API_KEY_VERSION_POLL_SECONDS = env_float("API_KEY_VERSION_POLL_SECONDS", 0.5)
# Postgres unreachable: serve a record past its TTL for this much longer (stale-if-error), wait at
# most this long for a reload, and leave Postgres alone this long after a failed one.
API_KEY_STALE_SECONDS = env_float("API_KEY_STALE_SECONDS", 300.0)
API_KEY_LOAD_TIMEOUT_SECONDS = env_float("API_KEY_LOAD_TIMEOUT_SECONDS", 1.0)
API_KEY_DB_BACKOFF_SECONDS = env_float("API_KEY_DB_BACKOFF_SECONDS", 2.0)
# Key records each process loads when it starts, most recently used first (0: none).
API_KEY_PRELOAD = env_int("API_KEY_PRELOAD", 10000)
# Key ids Postgres did not know: remembered per process, at most this many, this long.
API_KEY_NEGATIVE_CACHE_SIZE = env_int("API_KEY_NEGATIVE_CACHE_SIZE", 10000)
API_KEY_NEGATIVE_CACHE_SECONDS = env_float("API_KEY_NEGATIVE_CACHE_SECONDS", 30.0)
# Failed key authentications per client address per minute, burst the same (0: unlimited).
API_AUTH_FAILURES_PER_MINUTE = env_int("API_AUTH_FAILURES_PER_MINUTE", 60)
API_KEY_LAST_USED_RESOLUTION_SECONDS = env_int("API_KEY_LAST_USED_RESOLUTION_SECONDS", 60)
API_KEY_DEFAULT_ROTATION_GRACE = env_str("API_KEY_DEFAULT_ROTATION_GRACE", "1h")

# --- Tenants ----------------------------------------------------------------------------------
# The limits a new tenant starts from when none are given (create_tenant, the console's form):
# one of the presets of tenants/presets.py. "unlimited" must be chosen explicitly.
TENANT_DEFAULT_PRESET = env_choice(
    "TENANT_DEFAULT_PRESET", "trial", ("trial", "standard", "enterprise", "unlimited")
)

# --- Inference ------------------------------------------------------------------------------
INFERENCE_MODEL = env_str("INFERENCE_MODEL", "google/flan-t5-base")
INFERENCE_ADAPTER = env_str("INFERENCE_ADAPTER", "")
# Registered adapters the model process holds at once (least recently used evicted beyond it,
# never one with running rows; INFERENCE_ADAPTER is not counted), docs/engine.md "Adapters".
INFERENCE_MAX_ADAPTERS = env_int("INFERENCE_MAX_ADAPTERS", 16)
# The highest LoRA rank `adapter_add` registers (per-tenant adapters, docs/adapters.md): the
# engine's per-row matrices are sized by it.
INFERENCE_MAX_ADAPTER_RANK = env_int("INFERENCE_MAX_ADAPTER_RANK", 64)
INFERENCE_QUANTIZATION = env_choice(
    "INFERENCE_QUANTIZATION", "auto", ("auto", "bnb-int8", "torch-int8", "bf16", "none")
)
INFERENCE_DEVICE = env_choice("INFERENCE_DEVICE", "auto", ("auto", "cpu", "cuda"))
INFERENCE_MAX_BATCH = env_int("INFERENCE_MAX_BATCH", 32)
# continuous: waiting requests join the running batch between decoder steps; static: a batch
# runs until its last row ends (kept for comparison, docs/engine.md).
INFERENCE_SCHEDULER = env_choice("INFERENCE_SCHEDULER", "continuous", ("continuous", "static"))
# Tokens the running rows may hold in the caches (each row: prompt + max_tokens).
INFERENCE_TOKEN_BUDGET = env_int("INFERENCE_TOKEN_BUDGET", 16384)
# Encoder tokens (newcomers x longest prompt) admitted together into one encoder pass.
INFERENCE_MAX_PREFILL_TOKENS = env_int("INFERENCE_MAX_PREFILL_TOKENS", 1024)
# Encoder work between two decoder steps while rows decode, in prompt tokens through the whole
# encoder (a pass is cut at layer boundaries; at least one layer a step; 0: a pass runs whole).
INFERENCE_PREFILL_STEP_TOKENS = env_int("INFERENCE_PREFILL_STEP_TOKENS", 32)
# Newcomers' encoder passes on a thread of their own beside the decoder steps (half the torch
# threads) instead of in pauses between them; auto: on a CPU with two threads or more.
INFERENCE_PREFILL_THREAD = env_choice("INFERENCE_PREFILL_THREAD", "auto", ("auto", "on", "off"))
# Rows a batch may hold past INFERENCE_MAX_BATCH for tenants holding no row in it (a tenant
# filling the batch does not hold another tenant's first token until one of its rows ends).
INFERENCE_TENANT_HEADROOM = env_int("INFERENCE_TENANT_HEADROOM", 2)
INFERENCE_MAX_WAIT_MS = env_int("INFERENCE_MAX_WAIT_MS", 10)
INFERENCE_MAX_QUEUE = env_int("INFERENCE_MAX_QUEUE", 256)
# A queued request that has not started after this many seconds gets 503 overloaded (0: no bound).
INFERENCE_MAX_QUEUE_WAIT_SECONDS = env_float("INFERENCE_MAX_QUEUE_WAIT_SECONDS", 30.0)
INFERENCE_THREADS = env_int("INFERENCE_THREADS", 0)  # 0: one per available core
# Added to the decoding thread's nice value (10: on a shared CPU, request handling goes first;
# the chaos runs met their 429 goal at 0, docs/engine.md).
INFERENCE_MODEL_NICE = env_int("INFERENCE_MODEL_NICE", 0)
# CPUs the model thread runs on ("1", "2-7"; empty: any): keeps request handling off its cores.
INFERENCE_CPUS = env_cpus("INFERENCE_CPUS")
# Decode in a model process of its own, not a thread sharing the interpreter lock with the
# event loop (docs/engine.md).
INFERENCE_MODEL_PROCESS = env_bool("INFERENCE_MODEL_PROCESS", True)
INFERENCE_AUTOLOAD = env_bool("INFERENCE_AUTOLOAD", True)
INFERENCE_MAX_INPUT_TOKENS = env_int("INFERENCE_MAX_INPUT_TOKENS", 0)  # 0: the tokenizer's (512)
INFERENCE_MAX_OUTPUT_TOKENS = env_int("INFERENCE_MAX_OUTPUT_TOKENS", 512)
INFERENCE_ALLOW_DOWNLOAD = env_bool("INFERENCE_ALLOW_DOWNLOAD", True)
INFERENCE_DRAIN_SECONDS = env_float("INFERENCE_DRAIN_SECONDS", 30.0)
# The model id clients see in /v1/models and send as `model` (default: hub id or folder name).
INFERENCE_MODEL_NAME = env_str("INFERENCE_MODEL_NAME", "")

# --- API ------------------------------------------------------------------------------------
API_MAX_PROMPT_CHARS = env_int("API_MAX_PROMPT_CHARS", 16_000)  # 400 above it
API_DEFAULT_MAX_TOKENS = env_int("API_DEFAULT_MAX_TOKENS", 256)  # when a request gives none
WS_MAX_CONCURRENT = env_int("WS_MAX_CONCURRENT", 4)  # requests running at once per socket
WS_MAX_MESSAGE_BYTES = env_int("WS_MAX_MESSAGE_BYTES", 65_536)
WS_AUTH_TIMEOUT_SECONDS = env_float("WS_AUTH_TIMEOUT_SECONDS", 10.0)
# A socket is closed (code 4000) this long after it opened; clients reconnect. Bounds how long
# anything one socket holds (its key check included) can outlive a change.
WS_MAX_LIFETIME_SECONDS = env_float("WS_MAX_LIFETIME_SECONDS", 3600.0)

# --- Serving and metrics --------------------------------------------------------------------
# `manage.py serve` runs this many daphne processes on one socket (one model each: a process
# per GPU). Above 1, PROMETHEUS_MULTIPROC_DIR must name a directory private to this container
# so /metrics adds up every process; prometheus_client reads that variable itself.
WEB_PROCESSES = env_int("WEB_PROCESSES", 1)
PROMETHEUS_MULTIPROC_DIR = env_str("PROMETHEUS_MULTIPROC_DIR", "")

# --- Django basics --------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(BASE_DIR / "staticfiles")))
STATICFILES_DIRS = [BASE_DIR / "static"]
# Daphne serves no files itself; the ASGI app serves /static/ (see console/asgi.py).
SERVE_STATIC = env_bool("SERVE_STATIC", True)

LOGIN_URL = "/admin/login/"

# --- Security -------------------------------------------------------------------------------
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SECURE = not DEBUG
CSRF_COOKIE_SECURE = not DEBUG
# Traefik terminates TLS (or cloudflared does); trust its scheme header only behind it.
if env_bool("BEHIND_PROXY", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# Strict-Transport-Security on answers to HTTPS requests (Django's SecurityMiddleware, so the
# console and the admin; BEHIND_PROXY makes a request HTTPS by the proxy's X-Forwarded-Proto).
# 0: off. Turn it on only where every client reaches the node over HTTPS: browsers then refuse
# plain HTTP to the host for this many seconds.
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
# The only header we believe for the client address, set by our own Traefik.
TRUSTED_PROXY_HEADER = env_str("TRUSTED_PROXY_HEADER", "")
# ...and only when the TCP peer is one of these addresses/CIDRs (our Traefik, cloudflared);
# core/clientaddr.py. Empty: never believe a header, use the peer address.
TRUSTED_PROXY_ADDRESSES = env_list("TRUSTED_PROXY_ADDRESSES", [])

# Request body cap for the API (413 above it).
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("MAX_BODY_BYTES", 1_048_576)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {
        # SQL logging would echo parameters; never turn it on (the reference leaked keys so).
        "django.db.backends": {"level": "WARNING", "propagate": True},
        "bitsandbytes": {"level": "ERROR", "propagate": True},
        # One warning line per 4xx would turn a flood of 429s into a flood of log writes (and
        # cost more than the refusal itself); 5xx are still logged as errors.
        "django.request": {"level": "ERROR", "propagate": True},
    },
}
