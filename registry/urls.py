from django.urls import path

from registry import apis

urlpatterns = [
    path("models/", apis.ModelListApi.as_view(), name="models-list"),
    path("models/<str:model_id>/", apis.ModelDetailApi.as_view(), name="models-detail"),
]
