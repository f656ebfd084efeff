"""
Settings of the seed tutorial's Django project (tests/django_seed).

The project is the reference Django side of the interop tests: the Rust port's tests start it with
daphne, or act as "a Django process" through tests/python/layer_tool.py, which reads the same
channel layer settings. Differences from the tutorial are limited to what a test needs: no
database, any host, and CHANNEL_LAYERS built from environment variables:

- SEED_LAYER: "memory" (default; channels.layers.InMemoryChannelLayer, the tutorial's development
  setting), "core" (channels_redis.core.RedisChannelLayer, the tutorial's production setting) or
  "pubsub" (channels_redis.pubsub.RedisPubSubChannelLayer).
- SEED_REDIS_URLS: comma-separated Redis URLs, in shard order (default
  "redis://127.0.0.1:6379/1", the tutorial's host). An entry
  "sentinel://HOST:PORT;HOST:PORT.../MASTER_NAME" is a Sentinel set (channels_redis' hosts entry
  with "sentinels" and "master_name").
- SEED_PREFIX: the layer's key prefix (default "asgi").
- SEED_ENCRYPTION_KEYS: comma-separated symmetric_encryption_keys (optional).
- SEED_GROUP_EXPIRY: the core layer's group_expiry in seconds (optional; channels_redis' default
  is 86400).
- SEED_DATABASE: a SQLite file for users and sessions (optional; without it there is no database,
  as before). The identity views (accounts/) need it.
- SEED_TOKEN_SECRET, SEED_HOOK_SECRET: the connection-token secret (the replicas'
  CHANNELS_TOKEN_HS256_SECRET) and the connect-hook secret (CHANNELS_CONNECT_HOOK_SECRET).
"""

import os
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

# A fixed key is fine: this project only ever runs in tests, on loopback.
SECRET_KEY = "django-insecure-seed-tutorial-test-project-key"

DEBUG = True

ALLOWED_HOSTS = ["*"]

INSTALLED_APPS = [
    # daphne first, so that its runserver replaces Django's.
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "app01.apps.App01Config",
    "app02.apps.App02Config",
    "accounts.apps.AccountsConfig",
    "channels",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "djangoProject.urls"

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

ASGI_APPLICATION = "djangoProject.asgi.application"

# The chat pages never touch a database; an empty dict selects Django's dummy backend, so nothing
# is created on disk (the admin site is routed but unusable).
DATABASES = {}
if os.environ.get("SEED_DATABASE"):
    DATABASES = {
        "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": os.environ["SEED_DATABASE"]}
    }

# Identity for the Rust replicas (accounts/).
CHANNELS_TOKEN_SECRET = os.environ.get("SEED_TOKEN_SECRET", "")
CHANNELS_CONNECT_HOOK_SECRET = os.environ.get("SEED_HOOK_SECRET", "")
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/chatgroup?groupID=1"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"


def _split(value):
    """Splits a comma-separated environment value, dropping empty items."""
    return [item.strip() for item in value.split(",") if item.strip()]


def _host(entry):
    """A channels_redis hosts entry: a Redis URL as given, or a Sentinel set for
    sentinel://HOST:PORT;HOST:PORT.../MASTER_NAME."""
    if not entry.startswith("sentinel://"):
        return entry
    addrs, _, master_name = entry[len("sentinel://"):].partition("/")
    sentinels = []
    for addr in addrs.split(";"):
        host, _, port = addr.rpartition(":")
        sentinels.append((host, int(port)))
    return {"sentinels": sentinels, "master_name": master_name}


def channel_layers_from_env(env=os.environ):
    """Builds CHANNEL_LAYERS from the SEED_* environment variables described above."""
    kind = env.get("SEED_LAYER", "memory").strip() or "memory"
    if kind == "memory":
        return {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    backends = {
        "core": "channels_redis.core.RedisChannelLayer",
        "pubsub": "channels_redis.pubsub.RedisPubSubChannelLayer",
    }
    if kind not in backends:
        raise ImproperlyConfigured(
            f"SEED_LAYER must be memory, core or pubsub, not {kind!r}"
        )
    config = {
        "hosts": [_host(h) for h in _split(env.get("SEED_REDIS_URLS", ""))]
        or ["redis://127.0.0.1:6379/1"],
        "prefix": env.get("SEED_PREFIX", "asgi"),
    }
    group_expiry = env.get("SEED_GROUP_EXPIRY", "").strip()
    if group_expiry and kind == "core":
        config["group_expiry"] = int(group_expiry)
    keys = _split(env.get("SEED_ENCRYPTION_KEYS", ""))
    if keys:
        config["symmetric_encryption_keys"] = keys
    return {"default": {"BACKEND": backends[kind], "CONFIG": config}}


CHANNEL_LAYERS = channel_layers_from_env()
