"""Seed a benchmark layout in bulk: `manage.py bench_seed --prefix fb --chats 1000 --members 10`.

Chats `{prefix}{i}`; member k of chat i is user `u{i*members+k}` (display name
`U{n}`), the layout hablar-bench uses against every backend. Idempotent and fast
(bulk inserts): 10,000 users and memberships take a few seconds. Used by the
benchmarks (scripts/bench.sh); it does not touch the seeded dev users or chats.
"""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from chat.models import Chat, Membership


class Command(BaseCommand):
    help = "Create chats {prefix}{i} with members u{i*members+k} in bulk (benchmarks)."

    def add_arguments(self, parser):
        parser.add_argument("--prefix", required=True)
        parser.add_argument("--chats", type=int, required=True)
        parser.add_argument("--members", type=int, required=True)

    def handle(self, *args, **options):
        prefix, chats, members = options["prefix"], options["chats"], options["members"]
        User = get_user_model()
        names = [f"u{n}" for n in range(chats * members)]
        # "!" is Django's unusable password marker: these users only log in by token.
        User.objects.bulk_create(
            [User(username=n, first_name=n.upper(), password="!") for n in names],
            ignore_conflicts=True,
            batch_size=500,
        )
        ids = dict(User.objects.filter(username__startswith="u").values_list("username", "id"))
        Chat.objects.bulk_create(
            [Chat(id=f"{prefix}{i}") for i in range(chats)], ignore_conflicts=True, batch_size=500
        )
        Membership.objects.bulk_create(
            [
                Membership(chat_id=f"{prefix}{i}", user_id=ids[f"u{i * members + k}"])
                for i in range(chats)
                for k in range(members)
            ],
            ignore_conflicts=True,
            batch_size=500,
        )
        self.stdout.write(f"seeded {chats} chats x {members} members ({prefix}*)")
