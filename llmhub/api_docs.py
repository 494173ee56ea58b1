"""The API docs: Swagger UI and ReDoc from drf-spectacular-sidecar's static files (pinned, and working offline),
under llmhub's bar (templates/api_docs/)."""

from django.http import HttpRequest
from django.urls import path
from drf_spectacular.utils import extend_schema
from drf_spectacular.views import SpectacularRedocView, SpectacularSwaggerView


class RedocView(SpectacularRedocView):
    template_name = "api_docs/redoc.html"

    @extend_schema(exclude=True)  # a page, not an operation (as the view it overrides says)
    def get(self, request: HttpRequest, *args, **kwargs):
        response = super().get(request, *args, **kwargs)
        # ReDoc's sidebar shows a logo from Redocly's CDN: refused here, so the page calls no third party.
        response["Content-Security-Policy"] = "img-src 'self' data:"
        return response


urlpatterns = [
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema", template_name="api_docs/swagger_ui.html"),
         name="swagger-ui"),
    path("api/docs/v1/", SpectacularSwaggerView.as_view(url="/v1/openapi.json", title="llmhub /v1 (OpenAI-compatible)",
                                                        template_name="api_docs/swagger_ui.html"),
         name="swagger-ui-v1"),
    path("api/redoc/", RedocView.as_view(url_name="schema"), name="redoc"),
]
