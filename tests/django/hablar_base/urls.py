from django.urls import path

from chat.views import DevTokenView

urlpatterns = [
    path("api/dev/token", DevTokenView.as_view()),
]
