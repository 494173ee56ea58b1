"""The usage API: the caller's own totals, read from the roll-ups (usage/selectors.py)."""

from asgiref.sync import async_to_sync
from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from registry.authentication import Principal, request_tier
from usage.quotas import quota_remaining
from usage.selectors import usage_summary
from usage.serializers import UsageOutputSerializer


class UsageApi(APIView):
    """GET: the caller's requests, errors, tokens and cost today, this month and per day over the last 30 days, and
    what is left of each of their limits this period."""

    serializer_class = UsageOutputSerializer

    @extend_schema(responses=UsageOutputSerializer, operation_id="usage_retrieve")
    def get(self, request: Request) -> Response:
        summary = usage_summary(user_id=request.user.pk)
        api_key_id = request.auth.api_key_id if isinstance(request.auth, Principal) else None
        remaining_quota = async_to_sync(quota_remaining)(user_id=request.user.pk, api_key_id=api_key_id,
                                                         tier_slug=request_tier(request).slug)
        return Response(UsageOutputSerializer({**summary, "remaining_quota": remaining_quota}).data)
