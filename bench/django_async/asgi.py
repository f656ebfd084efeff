"""ASGI entry point of the benchmark's fair Django row (bench/peers.sh django-async): the seed
project (tests/django_seed, on PYTHONPATH) with its settings, pages and channel layer, and the
chats' routes served by the async consumers beside this file.

    cd bench/django_async && PYTHONPATH=../../tests/django_seed SEED_LAYER=pubsub \
        SEED_REDIS_URLS=redis://127.0.0.1:6379/0 uvicorn --loop uvloop --http httptools \
        --ws websockets-sansio asgi:application
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djangoProject.settings")

django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import re_path  # noqa: E402

import consumers  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": URLRouter(
            [
                re_path(r"room/", consumers.ChatConsumer.as_asgi()),
                re_path(r"group/(?P<groupID>\w+)/$", consumers.GroupChatConsumer.as_asgi()),
            ]
        ),
    }
)
