"""Staff API of the router: the shadow policies' report."""

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.permissions import IsAdminUser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from llmhub.api import StrictSerializer, error_responses
from routing.selectors import shadow_report


class ShadowQuerySerializer(StrictSerializer):
    hours = serializers.FloatField(required=False, default=24.0, min_value=0.01, max_value=24 * 90)


class ShadowRowSerializer(serializers.Serializer):
    tier = serializers.CharField()
    live_policy = serializers.CharField()
    shadow_policy = serializers.CharField()
    requests = serializers.IntegerField()
    agreement = serializers.FloatField(help_text="Share of requests where both chose the same model.")
    live_expected_cost = serializers.FloatField()
    shadow_expected_cost = serializers.FloatField()
    cost_change = serializers.FloatField(allow_null=True, help_text="shadow / live - 1")
    live_expected_latency_ms = serializers.FloatField()
    shadow_expected_latency_ms = serializers.FloatField()


class ShadowReportApi(APIView):
    """GET (staff): each tier's live routing policy against its shadow policy over the last `hours`."""

    permission_classes = (IsAdminUser,)
    serializer_class = ShadowRowSerializer

    @extend_schema(parameters=[ShadowQuerySerializer], operation_id="routing_shadow_report",
                   responses={200: ShadowRowSerializer(many=True), **error_responses(400, 403)})
    def get(self, request: Request) -> Response:
        query = ShadowQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        return Response(ShadowRowSerializer(shadow_report(hours=query.validated_data["hours"]), many=True).data)
