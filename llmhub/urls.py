import sys

from django.contrib import admin
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect
from django.templatetags.static import static
from django.urls import include, path
from django.views import defaults
from drf_spectacular.views import SpectacularAPIView

from llmhub.api import error_body, unavailable_error


def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


def _is_api(request: HttpRequest) -> bool:
    return request.path.startswith(("/api/", "/v1/"))


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """API paths get the API's error shape even for a route that does not exist."""
    if _is_api(request):
        return JsonResponse(error_body(code="not_found", message="Not found."), status=404)
    return defaults.page_not_found(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    # Django calls this while handling the exception: a dependency that did not answer is a 503 to retry.
    unavailable = unavailable_error(sys.exc_info()[1])
    if unavailable is not None:
        body = error_body(code=unavailable.code, message=unavailable.message)
        response = JsonResponse(body, status=503) if _is_api(request) else HttpResponse(
            unavailable.message, status=503, content_type="text/plain; charset=utf-8")
        response["Retry-After"] = str(unavailable.retry_after)
        return response
    if _is_api(request):
        return JsonResponse(error_body(code="internal_error", message="Internal error."), status=500)
    return defaults.server_error(request)


def favicon(request: HttpRequest) -> HttpResponse:
    # Resolved per request: the hashed name exists only once collectstatic has run.
    return redirect(static("llmhub/favicon.svg"))


handler404 = not_found
handler500 = server_error


urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/", include("registry.urls")),
    path("api/", include("health.urls")),
    path("api/", include("generation.urls")),
    path("api/", include("translation.urls")),
    path("api/", include("usage.urls")),
    path("api/", include("analytics.urls")),
    path("api/", include("feedback.urls")),
    path("api/", include("routing.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("", include("llmhub.api_docs")),
    path("api-auth/", include("rest_framework.urls")),
    path("healthz", healthz, name="healthz"),
    # Pages link the SVG icon; a browser asking for the classic name (admin, JSON answers) is sent there too.
    path("favicon.ico", favicon),
    path("", include("pages.urls")),
]
