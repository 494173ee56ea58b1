from django.urls import path, re_path

from health import apis

urlpatterns = [
    # `POST /api/models/<id>/test`, with or without the trailing slash (APPEND_SLASH cannot redirect a POST).
    re_path(r"^models/(?P<model_id>[^/]+)/test/?$", apis.ModelTestStartApi.as_view(), name="models-test"),
    path("models/<str:model_id>/tests/", apis.ModelTestListApi.as_view(), name="models-tests-list"),
    path("models/<str:model_id>/tests/<int:test_id>/", apis.ModelTestDetailApi.as_view(), name="models-tests-detail"),
]
