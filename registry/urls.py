from django.urls import path

from registry import apis

urlpatterns = [
    path("models/", apis.ModelListApi.as_view(), name="models-list"),
    path("models/<str:model_id>/", apis.ModelDetailApi.as_view(), name="models-detail"),
    path("preferences/", apis.PreferencesApi.as_view(), name="preferences"),
    path("keys/", apis.ApiKeyListApi.as_view(), name="keys-list"),
    path("keys/<int:key_id>/revoke/", apis.ApiKeyRevokeApi.as_view(), name="keys-revoke"),
]
