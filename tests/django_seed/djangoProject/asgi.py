"""
ASGI entry point of the seed tutorial project: Django's HTTP app for the pages, and the
routings.py WebSocket routes for the consumers.

Serve it with: daphne -b 127.0.0.1 -p PORT djangoProject.asgi:application (cwd tests/django_seed).
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djangoProject.settings")

# Django must be set up (get_asgi_application does it) before the consumers and their models'
# apps are imported through the routes.
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from djangoProject import routings  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": URLRouter(routings.websocket_urlpatterns),
    }
)
