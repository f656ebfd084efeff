from django.contrib import admin
from django.urls import path

from app01 import views as vw1
from app02 import views as vw2

urlpatterns = [
    path('admin/', admin.site.urls),
    path("chatone", vw1.chat),
    path("chatgroup", vw2.groupchat)  # 群聊
]
