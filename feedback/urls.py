from django.urls import path

from feedback import apis

urlpatterns = [
    path("feedback/", apis.FeedbackApi.as_view(), name="feedback"),
]
