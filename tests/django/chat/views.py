"""Dev token endpoint, the counterpart of hablar-server's `--dev` one.

`POST /api/dev/token {"user_id": "alice", "ttl_secs": optional}` →
`{"token": "...", "user_id": "alice", "username": "Alice"}`. The token is minted by
simplejwt's `AccessToken.for_user`. A test fixture: a real deployment has no such route.
"""

from datetime import timedelta

from django.contrib.auth import get_user_model
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework_simplejwt.tokens import AccessToken

from chat.models import display_name


def mint_access_token(user, ttl_secs=None):
    token = AccessToken.for_user(user)
    if ttl_secs is not None:
        token.set_exp(lifetime=timedelta(seconds=ttl_secs))
    return str(token)


class DevTokenView(APIView):
    authentication_classes = []
    permission_classes = [AllowAny]

    def post(self, request):
        user_id = request.data.get("user_id")
        ttl_secs = request.data.get("ttl_secs")
        if not isinstance(user_id, str) or (
            ttl_secs is not None and (not isinstance(ttl_secs, int) or ttl_secs <= 0)
        ):
            return Response({"detail": "user_id (string) required"}, status=400)
        user = get_user_model().objects.filter(username=user_id).first()
        if user is None:
            return Response({"detail": "no such user"}, status=404)
        return Response(
            {
                "token": mint_access_token(user, ttl_secs),
                "user_id": user.get_username(),
                "username": display_name(user),
            }
        )
