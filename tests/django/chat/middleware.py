"""JWT authentication for WebSockets: `?token=<simplejwt access token>`.

The usual pattern of a Channels app with simplejwt: validate the token with simplejwt's
own classes (HS256, signing key, `exp`, `token_type`), load the user named by the
`user_id` claim, and put it into `scope["user"]`. A missing or bad token leaves an
AnonymousUser; the consumer then refuses the handshake. Nothing here logs the token.
"""

from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.middleware import BaseMiddleware
from django.contrib.auth.models import AnonymousUser
from rest_framework_simplejwt.authentication import JWTAuthentication
from rest_framework_simplejwt.exceptions import AuthenticationFailed, InvalidToken, TokenError


@database_sync_to_async
def user_for_token(raw_token):
    auth = JWTAuthentication()
    try:
        validated = auth.get_validated_token(raw_token)
        return auth.get_user(validated)
    except (InvalidToken, TokenError, AuthenticationFailed):
        return AnonymousUser()


class JWTQueryStringAuthMiddleware(BaseMiddleware):
    async def __call__(self, scope, receive, send):
        query = parse_qs(scope.get("query_string", b"").decode("latin1"))
        tokens = query.get("token")
        scope = dict(scope)
        scope["user"] = await user_for_token(tokens[0]) if tokens else AnonymousUser()
        return await super().__call__(scope, receive, send)
