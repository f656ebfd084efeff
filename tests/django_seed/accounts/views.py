"""
Identity for the Rust replicas, decided by Django (not part of the seed tutorial).

- ws_token: a logged-in page asks for a short-lived connection token (HS256, PyJWT) and opens its
  WebSocket with it (`?token=`); the replicas verify it with CHANNELS_TOKEN_HS256_SECRET.
- connect_hook: the replicas POST each tokenless handshake here (--connect-hook); the browser's
  forwarded Cookie header goes through Django's own session and auth machinery, as Channels'
  AuthMiddlewareStack would, and the answer names the user and the groups they may join.

Both need SEED_DATABASE (users and sessions live in SQLite) and their secrets from the
environment (SEED_TOKEN_SECRET, SEED_HOOK_SECRET).
"""

import hmac
import json
import time

import jwt
from django.conf import settings
from django.contrib.auth import get_user
from django.http import HttpResponse, JsonResponse
from django.utils.module_loading import import_string
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

# How long a connection token lives; the page fetches a new one when its socket closes with 4401.
TOKEN_SECONDS = 300


def groups_of(user):
    """The groups a user may join: every chat group for staff, groups 1 and 2 for the others."""
    return ["*"] if user.is_staff else ["1", "2"]


def ws_token(request):
    """A connection token for the logged-in user; 403 (not a login redirect) for anyone else."""
    if not request.user.is_authenticated:
        return JsonResponse({"error": "not signed in", "login": settings.LOGIN_URL}, status=403)
    claims = {
        "sub": str(request.user.pk),
        "name": request.user.get_username(),
        "groups": groups_of(request.user),
        "exp": int(time.time()) + TOKEN_SECONDS,
    }
    token = jwt.encode(claims, settings.CHANNELS_TOKEN_SECRET, algorithm="HS256")
    return JsonResponse({"token": token, "name": claims["name"], "groups": claims["groups"]})


def _cookies(header):
    pairs = (part.strip().split("=", 1) for part in header.split(";") if "=" in part)
    return {name: value for name, value in pairs}


@csrf_exempt
@require_POST
def connect_hook(request):
    """The replicas' connect hook: who is behind this handshake's session cookie?"""
    expected = f"Bearer {settings.CHANNELS_CONNECT_HOOK_SECRET}"
    if not hmac.compare_digest(request.headers.get("Authorization", ""), expected):
        return HttpResponse(status=403)
    handshake = json.loads(request.body)
    cookies = _cookies(handshake.get("headers", {}).get("cookie", ""))
    session_store = import_string(settings.SESSION_ENGINE + ".SessionStore")
    request.session = session_store(cookies.get(settings.SESSION_COOKIE_NAME))
    user = get_user(request)
    if not user.is_authenticated:
        return HttpResponse(status=403)
    return JsonResponse(
        {"user": str(user.pk), "name": user.get_username(), "groups": groups_of(user)}
    )
