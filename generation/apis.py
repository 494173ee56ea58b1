from adrf.views import APIView
from django.conf import settings
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from generation import services
from generation.openai_compat import BadRequest, chat_body_validate
from generation.openai_schema import messages_schema
from llmhub.api import StrictSerializer, error_responses
from registry.authentication import request_tier
from registry.selectors import preferences_get, registry_get
from routing.policies import Route
from routing.services import TASK_HEADER, task_resolve


class CallerAPIView(APIView):
    """An async API view whose sync set-up (authentication, permissions) also resolves the caller and their
    preferences, so the async handler needs no database."""

    def initial(self, request: Request, *args, **kwargs) -> None:
        super().initial(request, *args, **kwargs)
        principal = request.auth
        request.caller = services.Caller(user_id=request.user.pk, api_key_id=getattr(principal, "api_key_id", None),
                                         tier=request_tier(request))
        request.registry = registry_get()
        request.preferences = preferences_get(request.user.pk)


def quota_headers(reservation, route: Route | None = None) -> dict[str, str]:
    """OpenAI's x-ratelimit-* headers of the request's quota reservation (none when no limit applies), and
    `x-llmhub-route`: how the model was chosen."""
    headers = reservation.headers() if reservation is not None else {}
    return {**headers, "x-llmhub-route": route.header()} if route is not None else headers


def request_task(request: Request, endpoint: str) -> str:
    """The request's task type: the `x-llmhub-task` header, else the endpoint's."""
    return task_resolve(endpoint=endpoint, hint=request.headers.get(TASK_HEADER))


class AttemptSerializer(serializers.Serializer):
    model = serializers.CharField()
    outcome = serializers.CharField()
    latency_ms = serializers.FloatField()
    upstream_status = serializers.IntegerField(allow_null=True)
    message = serializers.CharField(allow_blank=True)


class UsageSerializer(serializers.Serializer):
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    estimated = serializers.BooleanField()


@extend_schema_field(messages_schema())
class MessagesField(serializers.ListField):
    child = serializers.DictField()


class GenerateInputSerializer(StrictSerializer):
    exactly_one_of = ("prompt", "messages")

    prompt = serializers.CharField(required=False, max_length=500_000, trim_whitespace=False)  # sent as written
    messages = MessagesField(required=False, allow_empty=False)
    model = serializers.CharField(required=False, max_length=200, help_text="A model id; the default otherwise.")
    provider = serializers.CharField(required=False, max_length=100,
                                     help_text="Legacy: a provider slug instead of a model id.")
    max_tokens = serializers.IntegerField(required=False, min_value=1, max_value=settings.LLMHUB["MAX_OUTPUT_TOKENS"])
    temperature = serializers.FloatField(required=False, min_value=0, max_value=2)

    def validate_messages(self, messages: list) -> list:
        try:
            chat_body_validate({"messages": messages})
        except BadRequest as error:
            raise serializers.ValidationError(error.message) from None
        return messages


class GenerateOutputSerializer(serializers.Serializer):
    request_id = serializers.CharField()
    text = serializers.CharField(allow_blank=True)
    model = serializers.CharField(source="model.id")
    attempts = AttemptSerializer(many=True)
    usage = UsageSerializer()
    cost = serializers.DecimalField(max_digits=20, decimal_places=10)
    latency_ms = serializers.FloatField()


class GenerateApi(CallerAPIView):
    """Generate text from a prompt or chat messages, with fallback to the model's fallbacks."""

    serializer_class = GenerateInputSerializer

    @extend_schema(request=GenerateInputSerializer, operation_id="generate",
                   responses={200: GenerateOutputSerializer, **error_responses(404, 429, 502, 504)})
    async def post(self, request: Request) -> Response:
        data = GenerateInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        params = dict(data.validated_data)
        task = request_task(request, "api.generate")
        outcome = await services.generate(caller=request.caller, registry=request.registry,
                                          prompt=params.pop("prompt", None), messages=params.pop("messages", None),
                                          model_id=params.pop("model", None), provider=params.pop("provider", None),
                                          preferred_ids=request.preferences.preferred_order(task), task=task, **params)
        return Response(GenerateOutputSerializer(outcome).data, headers=quota_headers(outcome.quota, outcome.route))
