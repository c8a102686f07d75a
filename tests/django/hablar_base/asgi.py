"""ASGI entry point: HTTP goes to Django, WebSockets to the chat consumer.

The stack is the one the Channels docs recommend: Origin check first (refuses a
cross-site handshake with HTTP 403), then the JWT query-string middleware, then the
URL router.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hablar_base.settings")
django_asgi_app = get_asgi_application()

# Imported after setup: they touch models.
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from chat.middleware import JWTQueryStringAuthMiddleware  # noqa: E402
from chat.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(
            JWTQueryStringAuthMiddleware(URLRouter(websocket_urlpatterns))
        ),
    }
)
