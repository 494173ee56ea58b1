from django.urls import path

from routing import apis

urlpatterns = [
    path("routing/shadow/", apis.ShadowReportApi.as_view(), name="routing-shadow"),
]
