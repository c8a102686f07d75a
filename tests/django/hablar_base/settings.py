"""Settings of the base-layer reference backend (a stock Django Channels chat app).

Everything that a test or a script varies comes from the environment:

- HABLAR_JWT_SECRET: simplejwt's HS256 signing key, shared with hablar-server
  (default `hablar-dev-secret`, the same default as `hablar-server --dev`).
- REDIS_URL: the channels_redis channel layer (default redis://127.0.0.1:6379/0).
- HABLAR_DJANGO_DB: the sqlite file (default var/db.sqlite3 beside manage.py).
"""

import os
import warnings
from datetime import timedelta
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

# A test fixture, not a deployment: the Django secret only signs sessions we never use.
SECRET_KEY = "hablar-base-layer-reference-backend-not-secret"
DEBUG = False

# AllowedHostsOriginValidator matches WebSocket Origins against these host names (any
# port), so a browser page on another loopback port may connect; other Origins and a
# missing Origin are refused, as in any stock Channels app.
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]"]

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "corsheaders",
    "rest_framework",
    "channels",
    "chat",
]

MIDDLEWARE = [
    "corsheaders.middleware.CorsMiddleware",
    "django.middleware.common.CommonMiddleware",
]

ROOT_URLCONF = "hablar_base.urls"
ASGI_APPLICATION = "hablar_base.asgi.application"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("HABLAR_DJANGO_DB", str(BASE_DIR / "var" / "db.sqlite3")),
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

USE_TZ = True
TIME_ZONE = "UTC"

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {
            "hosts": [
                {
                    "address": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
                    # redis-py 8 made socket_timeout default to 5 s; channels_redis's idle
                    # BZPOPMIN then times out and every consumer idle for ~5 s dies with
                    # 1011 (django/channels_redis#422). Restore redis-py 7's no timeout.
                    "socket_timeout": None,
                }
            ]
        },
    }
}

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework_simplejwt.authentication.JWTAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "UNAUTHENTICATED_USER": None,
}

# The shared dev key `hablar-dev-secret` is shorter than PyJWT's recommended 32 bytes;
# it is the agreed dev default, so the warning is noise here.
warnings.filterwarnings("ignore", message="The HMAC key is")

SIMPLE_JWT = {
    "ALGORITHM": "HS256",
    "SIGNING_KEY": os.environ.get("HABLAR_JWT_SECRET", "hablar-dev-secret"),
    # Interop choice: the `user_id` claim is the username ("alice"), not the integer pk,
    # so a token minted here names the same user as hablar-server's dev ids, and a
    # token minted by hablar-server (user_id "alice") resolves to a user here.
    "USER_ID_FIELD": "username",
    "USER_ID_CLAIM": "user_id",
    "ACCESS_TOKEN_LIFETIME": timedelta(hours=1),
}

# CORS for the dev token endpoint: any loopback origin on any port (browser tests run
# their page on a random port).
CORS_ALLOWED_ORIGIN_REGEXES = [
    r"^http://127\.0\.0\.1(:\d+)?$",
    r"^http://localhost(:\d+)?$",
    r"^http://\[::1\](:\d+)?$",
]

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
