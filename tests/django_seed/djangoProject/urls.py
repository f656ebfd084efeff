from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import path

from app01 import views as vw1
from app02 import views as vw2
from accounts import views as accounts

urlpatterns = [
    path('admin/', admin.site.urls),
    path("chatone", vw1.chat),
    path("chatgroup", vw2.groupchat),  # 群聊
    # Identity for the Rust replicas (not in the seed tutorial): Django's login, a connection
    # token for the logged-in user, and the replicas' connect hook.
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("ws/token/", accounts.ws_token),
    path("ws/connect/", accounts.connect_hook),
]
