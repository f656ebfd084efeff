from django.urls import re_path

from app01 import consumers as consm1
from app02 import consumers as consm2

websocket_urlpatterns = [
    re_path(r'room/', consm1.ChatConsumer.as_asgi()),
    re_path(r"group/(?P<groupID>\w+)/$", consm2.GroupChatConsumer.as_asgi())  # 群聊
]
