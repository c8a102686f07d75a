"""Print a simplejwt access token for a seeded user: `manage.py mint_token alice`."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from chat.views import mint_access_token


class Command(BaseCommand):
    help = "Print an access token (simplejwt, HS256, HABLAR_JWT_SECRET) for a user."

    def add_arguments(self, parser):
        parser.add_argument("user_id")
        parser.add_argument("--ttl-secs", type=int, default=None)

    def handle(self, *args, **options):
        user = get_user_model().objects.filter(username=options["user_id"]).first()
        if user is None:
            raise CommandError("no such user")
        self.stdout.write(mint_access_token(user, options["ttl_secs"]))
