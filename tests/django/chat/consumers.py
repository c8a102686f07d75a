"""The chat consumer: the base layer of PROTOCOL.md, and nothing more.

Client frames `typing_start`, `typing_stop` and `new_message` are relayed to the chat's
channel-layer group; every member (the sender included) gets the group's events.
Unknown types and malformed frames are ignored silently. No `ready`, `seq`, `pong` or
`error` events: those are hablar-server extensions a base-layer backend does not have.
"""

import json

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from chat.models import Chat, Membership, Message, display_name

# Fields of a message the server owns; whatever the client put there is overwritten.
SERVER_OWNED = ("id", "seq", "sender", "created_at", "chat_id")


def rfc3339(dt):
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class ChatConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self):
        self.chat_id = self.scope["url_route"]["kwargs"]["chat_id"]
        self.user = self.scope["user"]
        if not self.user.is_authenticated or not await self.is_member():
            # Closing before accepting refuses the handshake (HTTP 403 from daphne).
            await self.close()
            return
        self.group = f"chat_{self.chat_id}"
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()

    async def disconnect(self, code):
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive(self, text_data=None, bytes_data=None, **kwargs):
        try:
            content = json.loads(text_data if text_data is not None else bytes_data)
        except (TypeError, ValueError):
            return
        if isinstance(content, dict):
            await self.receive_json(content)

    async def receive_json(self, content, **kwargs):
        kind = content.get("type")
        user_id = self.user.get_username()
        if kind == "typing_start":
            payload = {
                "type": "typing_start",
                "user_id": user_id,
                "username": display_name(self.user),
            }
        elif kind == "typing_stop":
            payload = {"type": "typing_stop", "user_id": user_id}
        elif kind == "new_message":
            message = await self.store_message(content.get("message"))
            if message is None:
                return
            payload = {"type": "new_message", "message": message}
        else:
            return
        await self.channel_layer.group_send(self.group, {"type": "chat.event", "payload": payload})

    async def chat_event(self, event):
        await self.send_json(event["payload"])

    @database_sync_to_async
    def is_member(self):
        return Membership.objects.filter(chat_id=self.chat_id, user=self.user).exists()

    @database_sync_to_async
    def store_message(self, sent):
        if not isinstance(sent, dict):
            return None
        content = sent.get("content")
        if not isinstance(content, str) or not content.strip():
            return None
        extra = {k: v for k, v in sent.items() if k not in SERVER_OWNED and k != "content"}
        chat = Chat.objects.get(pk=self.chat_id)
        stored = Message.objects.create(chat=chat, sender=self.user, content=content, extra=extra)
        return {
            "id": str(stored.id),
            "chat_id": chat.id,
            "content": stored.content,
            "sender": {"id": self.user.get_username(), "username": display_name(self.user)},
            "created_at": rfc3339(stored.created_at),
            **extra,
        }
