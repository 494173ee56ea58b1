from django.urls import path

from translation import apis

urlpatterns = [
    path("translate/", apis.TranslateApi.as_view(), name="translate"),
]
