from django.contrib.auth import views as auth_views
from django.urls import path, re_path

from pages import views

app_name = "pages"

MODEL = r"(?P<kind>registry|mine)/(?P<model_id>[-\w]+)"

urlpatterns = [
    path("accounts/login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("", views.home, name="home"),
    path("models/", views.models_picker, name="models"),
    path("models/status/", views.models_status, name="models-status"),
    path("models/tests/<int:test_id>/", views.model_test_detail, name="model-test"),
    re_path(rf"^models/{MODEL}/tests/$", views.model_tests, name="model-tests"),
    path("playground/", views.playground_page, name="playground"),
    path("playground/stream/", views.playground_stream, name="playground-stream"),
]
