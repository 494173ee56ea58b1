from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from generation.apis import (
    CallerAPIView,
    GenerateOutputSerializer,
    PromptMetadataSerializer,
    experiment_from,
    prompt_from,
    quota_headers,
)
from llmhub.api import StrictSerializer, error_responses
from translation import services


class TranslateInputSerializer(StrictSerializer):
    text = serializers.CharField(max_length=2_000_000, trim_whitespace=False)
    target_language = serializers.CharField(max_length=35, help_text="BCP 47, e.g. 'fr' or 'pt-BR'.")
    source_language = serializers.CharField(max_length=35, required=False)
    model = serializers.CharField(required=False, max_length=200)
    provider = serializers.CharField(required=False, max_length=100, help_text="Legacy: a provider slug.")
    metadata = PromptMetadataSerializer(required=False, help_text="A prompt template instead of the built-in "
                                        "`translation` one, and its variables (`text`, `target_language` and "
                                        "`source_clause` are supplied when it declares them); an experiment to join.")

    def to_internal_value(self, data):
        return super().to_internal_value(services.legacy_arguments(data) if isinstance(data, dict) else data)


class TranslateOutputSerializer(GenerateOutputSerializer):
    source_language = serializers.CharField(allow_null=True)
    target_language = serializers.CharField()
    pieces = serializers.IntegerField()
    answered_by = serializers.ListField(child=serializers.CharField(),
                                        help_text="The model that answered each piece, in order.")


class TranslateApi(CallerAPIView):
    """Translate text into a BCP 47 language; long texts are split at paragraphs and rejoined in order."""

    serializer_class = TranslateInputSerializer

    @extend_schema(request=TranslateInputSerializer, operation_id="translate",
                   responses={200: TranslateOutputSerializer, **error_responses(404, 429, 502, 504)})
    async def post(self, request: Request) -> Response:
        data = TranslateInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        params = data.validated_data
        experiment_from(params.get("metadata"))
        result = await services.translate(
            caller=request.caller, registry=request.registry, text=params["text"],
            target_language=params["target_language"], source_language=params.get("source_language"),
            model_id=params.get("model"), provider=params.get("provider"),
            preferred_ids=request.preferences.preferred_order("translation"),
            prompt=prompt_from(request, params.get("metadata")))
        return Response(TranslateOutputSerializer(result).data, headers=quota_headers(result.quota, result.prompt, result.route))
