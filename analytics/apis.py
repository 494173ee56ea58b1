"""The analytics API: models' and providers' figures over a window (analytics/selectors.py), and the staff's
recommendations. Views only parse the query and call the selectors."""

from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from analytics.permissions import IsStaff
from analytics.selectors import analytics_model, analytics_models, recommendations_recent
from analytics.serializers import (
    AnalyticsModelOutputSerializer,
    AnalyticsModelsOutputSerializer,
    AnalyticsQuerySerializer,
    RecommendationOutputSerializer,
)
from llmhub.api import error_responses
from registry.authentication import request_tier

RECOMMENDATIONS_SHOWN = 100


def _query(request: Request) -> dict:
    # A plain dict, not the QueryDict: DRF would take an empty value of a form field for an absent one.
    query = AnalyticsQuerySerializer(data=request.query_params.dict())
    query.is_valid(raise_exception=True)
    return {"window_key": query.validated_data["window"], "task": query.validated_data.get("task")}


class AnalyticsModelsApi(APIView):
    """GET: every model the caller may see (staff: all; others: their tier's and their own), side by side over a
    window: latency, TTFT, throughput, success and failures by kind, uptime from tests, cost per 1,000 requests;
    and the same per provider."""

    serializer_class = AnalyticsModelsOutputSerializer

    @extend_schema(parameters=[AnalyticsQuerySerializer],
                   responses={200: AnalyticsModelsOutputSerializer, **error_responses(400)},
                   operation_id="analytics_models_list")
    def get(self, request: Request) -> Response:
        report = analytics_models(user=request.user, tier=request_tier(request), **_query(request))
        return Response(AnalyticsModelsOutputSerializer(report).data)


class AnalyticsModelApi(APIView):
    """GET: one model's figures over a window, per task type, and per hour or day (`points`)."""

    serializer_class = AnalyticsModelOutputSerializer

    @extend_schema(parameters=[AnalyticsQuerySerializer],
                   responses={200: AnalyticsModelOutputSerializer, **error_responses(400)},
                   operation_id="analytics_models_retrieve")
    def get(self, request: Request, model_id: str) -> Response:
        report = analytics_model(user=request.user, tier=request_tier(request), model_id=model_id, **_query(request))
        return Response(AnalyticsModelOutputSerializer(report).data)


class RecommendationListApi(APIView):
    """GET (staff): the newest model recommendations, with their evidence."""

    permission_classes = [*APIView.permission_classes, IsStaff]
    serializer_class = RecommendationOutputSerializer

    @extend_schema(responses=RecommendationOutputSerializer(many=True), operation_id="analytics_recommendations_list")
    def get(self, request: Request) -> Response:
        return Response(RecommendationOutputSerializer(recommendations_recent(limit=RECOMMENDATIONS_SHOWN),
                                                       many=True).data)
