from django.urls import re_path

from chat.consumers import ChatConsumer

websocket_urlpatterns = [
    re_path(r"^ws/chat/(?P<chat_id>[A-Za-z0-9_-]{1,128})/?$", ChatConsumer.as_asgi()),
]
