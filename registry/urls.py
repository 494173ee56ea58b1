from django.urls import path, re_path

from registry import apis

urlpatterns = [
    path("models/", apis.ModelListApi.as_view(), name="models-list"),
    path("models/<str:model_id>/", apis.ModelDetailApi.as_view(), name="models-detail"),
    # `POST /api/models/<id>/test`, with or without the trailing slash (APPEND_SLASH cannot redirect a POST).
    re_path(r"^models/(?P<model_id>[^/]+)/test/?$", apis.ModelTestStartApi.as_view(), name="models-test"),
    path("models/<str:model_id>/tests/", apis.ModelTestListApi.as_view(), name="models-tests-list"),
    path("models/<str:model_id>/tests/<int:test_id>/", apis.ModelTestDetailApi.as_view(), name="models-tests-detail"),
    path("preferences/", apis.PreferencesApi.as_view(), name="preferences"),
    path("keys/", apis.ApiKeyListApi.as_view(), name="keys-list"),
    path("keys/<int:key_id>/revoke/", apis.ApiKeyRevokeApi.as_view(), name="keys-revoke"),
]
