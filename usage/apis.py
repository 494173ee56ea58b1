"""The usage API: the caller's own totals, read from the roll-ups (usage/selectors.py)."""

from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from usage.selectors import usage_summary
from usage.serializers import UsageOutputSerializer


class UsageApi(APIView):
    """GET: the caller's requests, errors, tokens and cost today, this month and per day over the last 30 days."""

    serializer_class = UsageOutputSerializer

    @extend_schema(responses=UsageOutputSerializer, operation_id="usage_retrieve")
    def get(self, request: Request) -> Response:
        summary = usage_summary(user_id=request.user.pk)
        # QUOTAS: the quotas engineer (usage/quotas.py) fills this with the caller's remaining quota per limit.
        remaining_quota: list[dict] = []
        return Response(UsageOutputSerializer({**summary, "remaining_quota": remaining_quota}).data)
