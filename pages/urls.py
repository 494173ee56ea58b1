from django.contrib.auth import views as auth_views
from django.urls import path, re_path

from pages import analytics_views, experiments, keys, usage_views, views

app_name = "pages"

urlpatterns = [
    path("accounts/login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("", views.home, name="home"),
    path("models/", views.models_picker, name="models"),
    path("models/status/", views.models_status, name="models-status"),
    path("models/mine/", views.own_models, name="own-models"),
    path("models/mine/endpoint-models/", views.endpoint_models_list, name="endpoint-models"),
    path("models/mine/<slug:model_id>/edit/", views.own_model_edit, name="own-model-edit"),
    path("models/mine/<slug:model_id>/delete/", views.own_model_delete, name="own-model-delete"),
    path("models/mine/<slug:model_id>/capabilities/", views.own_model_capabilities_apply,
         name="own-model-capabilities"),
    re_path(r"^models/(?P<kind>registry|mine)/(?P<model_id>[^/]+)/tests/$", views.model_tests, name="model-tests"),
    path("models/tests/<int:test_id>/", views.model_test_detail, name="model-test"),
    path("playground/", views.playground_page, name="playground"),
    path("playground/stream/", views.playground_stream, name="playground-stream"),
    path("keys/", keys.keys_page, name="keys"),
    path("keys/<int:key_id>/revoke/", keys.key_revoke, name="key-revoke"),
    path("models/<str:model_id>/analytics/", analytics_views.model_analytics, name="model-analytics"),
    path("analytics/", analytics_views.analytics_compare, name="analytics"),
    path("analytics/recommendations/", analytics_views.recommendations, name="analytics-recommendations"),
    path("usage/", usage_views.usage_mine, name="usage"),
    path("usage/requests/<str:request_id>/", usage_views.usage_request, name="usage-request"),
    path("usage/all/", usage_views.usage_all, name="usage-all"),
    path("usage/all/export.csv", usage_views.usage_export, name="usage-export"),
    path("experiments/", experiments.experiments_list, name="experiments"),
    path("experiments/<int:experiment_id>/", experiments.experiment_detail, name="experiment"),
    path("experiments/<int:experiment_id>/promote/", experiments.experiment_promote_view, name="experiment-promote"),
    path("experiments/<int:experiment_id>/stop/", experiments.experiment_stop_view, name="experiment-stop"),
]
