"""Chats, memberships and stored messages. Users are Django's stock `auth.User`:
`username` is the id on the wire ("alice"), `first_name` the display name ("Alice")."""

import uuid

from django.conf import settings
from django.db import models


class Chat(models.Model):
    id = models.CharField(primary_key=True, max_length=128)
    members = models.ManyToManyField(
        settings.AUTH_USER_MODEL, through="Membership", related_name="chats"
    )

    def __str__(self):
        return self.id


class Membership(models.Model):
    chat = models.ForeignKey(Chat, on_delete=models.CASCADE)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["chat", "user"], name="unique_membership")
        ]


class Message(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    chat = models.ForeignKey(Chat, on_delete=models.CASCADE, related_name="messages")
    sender = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    content = models.TextField()
    # Fields the client added (client_id, reply_to, attachments, ...), passed on as sent.
    extra = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at"]


def display_name(user):
    """The name shown in events: the first name when seeded, else the username."""
    return user.first_name or user.username
