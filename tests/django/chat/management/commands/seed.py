"""Seed the same users and chats as `hablar-server --dev`."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from chat.models import Chat, Membership

USERS = {"alice": "Alice", "bob": "Bob", "carol": "Carol", "mallory": "Mallory"}
CHATS = {"general": ["alice", "bob", "carol"], "random": ["alice", "bob"]}


class Command(BaseCommand):
    help = "Create users alice/bob/carol/mallory and chats general/random (idempotent)."

    def handle(self, *args, **options):
        User = get_user_model()
        users = {}
        for username, name in USERS.items():
            user, _ = User.objects.get_or_create(username=username)
            user.first_name = name
            user.set_unusable_password()
            user.save()
            users[username] = user
        for chat_id, members in CHATS.items():
            chat, _ = Chat.objects.get_or_create(id=chat_id)
            for username in members:
                Membership.objects.get_or_create(chat=chat, user=users[username])
        self.stdout.write(f"seeded {len(USERS)} users, {len(CHATS)} chats")
