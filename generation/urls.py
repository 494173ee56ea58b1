from django.urls import path

from generation import apis

urlpatterns = [
    path("generate/", apis.GenerateApi.as_view(), name="generate"),
]
