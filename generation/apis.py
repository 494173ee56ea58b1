from adrf.views import APIView
from django.conf import settings
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from generation import services
from generation.arms import HEADER, experiment_bind
from generation.openai_compat import BadRequest, chat_body_validate
from generation.openai_schema import messages_schema
from llmhub.api import StrictSerializer, error_responses
from prompts.services import HEADER as PROMPT_HEADER
from prompts.services import VARIABLES_HEADER, PromptRequest, prompt_request_parse
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
        experiment_bind(request.headers.get(HEADER))


def quota_headers(reservation, prompt=None, route: Route | None = None) -> dict[str, str]:
    """OpenAI's x-ratelimit-* headers of the request's quota reservation (none when no limit applies), the prompt
    template's (`x-llmhub-prompt`, `x-llmhub-trimmed-turns`) when one served it, and `x-llmhub-route`: how the model
    was chosen."""
    headers = reservation.headers() if reservation is not None else {}
    if prompt is not None:
        headers = {**headers, **prompt.headers()}
    return {**headers, "x-llmhub-route": route.header()} if route is not None else headers


class PromptMetadataSerializer(StrictSerializer):
    prompt = serializers.CharField(max_length=160, required=False,
                                   help_text="A prompt template: name, name@label or name@version.")
    variables = serializers.DictField(required=False, help_text="The template's variables, by name.")
    experiment = serializers.CharField(max_length=100, required=False,
                                       help_text="Join this experiment (as does the x-llmhub-experiment header).")


def experiment_from(metadata: dict | None) -> None:
    """`metadata.experiment` joins that experiment (over the x-llmhub-experiment header), as on /v1."""
    if metadata and metadata.get("experiment"):
        experiment_bind(metadata["experiment"])


def prompt_from(request: Request, metadata: dict | None) -> PromptRequest | None:
    """The prompt template a request names: `metadata.prompt` (+ `variables`), else the x-llmhub-prompt headers."""
    return prompt_request_parse(metadata=metadata, header=request.headers.get(PROMPT_HEADER),
                                variables_header=request.headers.get(VARIABLES_HEADER))


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


class JsonStringField(serializers.CharField):
    """A string as JSON has it: DRF's CharField would take 5 for "5"."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class GenerateInputSerializer(StrictSerializer):
    # `prompt` or `messages`, not both; neither only with a prompt template (`metadata`, or the x-llmhub-prompt header
    # with which the schema cannot reckon).
    input_rules = {"not": {"required": ["prompt", "messages"]},
                   "anyOf": [{"required": ["prompt"]}, {"required": ["messages"]},
                             {"required": ["metadata"], "properties": {"metadata": {"required": ["prompt"]}}}]}

    prompt = serializers.CharField(required=False, max_length=500_000, trim_whitespace=False)  # sent as written
    messages = MessagesField(required=False, allow_empty=False)
    model = serializers.CharField(required=False, max_length=200, help_text="A model id; the default otherwise.")
    provider = serializers.CharField(required=False, max_length=100,
                                     help_text="Legacy: a provider slug instead of a model id.")
    max_tokens = serializers.IntegerField(required=False, min_value=1, max_value=settings.LLMHUB["MAX_OUTPUT_TOKENS"])
    temperature = serializers.FloatField(required=False, min_value=0, max_value=2)
    metadata = PromptMetadataSerializer(required=False, help_text="A prompt template to use, and its variables: its "
                                        "system part leads the messages, its user part ends them.")

    def validate(self, data: dict) -> dict:
        if "prompt" in data and "messages" in data:
            raise serializers.ValidationError("Give either 'prompt' or 'messages', not both.")
        if "prompt" not in data and "messages" not in data and "prompt" not in data.get("metadata", {}) \
                and not self.context.get("prompt_header"):
            raise serializers.ValidationError("Give either 'prompt' or 'messages' (or a prompt template in "
                                              "'metadata.prompt').")
        return super().validate(data)

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
        data = GenerateInputSerializer(data=request.data,
                                       context={"prompt_header": bool(request.headers.get(PROMPT_HEADER))})
        data.is_valid(raise_exception=True)
        params = dict(data.validated_data)
        task = request_task(request, "api.generate")
        metadata = params.pop("metadata", None) or {}
        experiment_from(metadata)
        template = prompt_from(request, metadata)
        outcome = await services.generate(caller=request.caller, registry=request.registry,
                                          prompt=params.pop("prompt", None), messages=params.pop("messages", None),
                                          model_id=params.pop("model", None), provider=params.pop("provider", None),
                                          preferred_ids=request.preferences.preferred_order(task), template=template,
                                          task=task, **params)
        return Response(GenerateOutputSerializer(outcome).data,
                        headers=quota_headers(outcome.quota, outcome.prompt, outcome.route))
