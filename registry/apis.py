from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from registry.authentication import request_tier
from registry.permissions import CanUseModel
from registry.selectors import ModelSpec, get_available_models, get_default_model, get_model_by_id, registry_get


class TierOutputSerializer(serializers.Serializer):
    slug = serializers.CharField()
    name = serializers.CharField()
    rank = serializers.IntegerField()


class ModelOutputSerializer(serializers.Serializer):
    id = serializers.CharField()
    display_name = serializers.CharField()
    provider = serializers.CharField()
    provider_name = serializers.CharField()
    capabilities = serializers.SerializerMethodField()
    context_window = serializers.IntegerField()
    input_price_per_million = serializers.DecimalField(max_digits=12, decimal_places=6)
    output_price_per_million = serializers.DecimalField(max_digits=12, decimal_places=6)
    allowed_tiers = serializers.ListField(child=serializers.CharField())
    required_tier = serializers.CharField(source="required_tier.slug", allow_null=True, default=None)
    fallbacks = serializers.ListField(child=serializers.CharField())
    is_default = serializers.SerializerMethodField()

    def get_capabilities(self, model: ModelSpec) -> list[str]:
        return sorted(model.capabilities)

    def get_is_default(self, model: ModelSpec) -> bool:
        return model.id == self.context.get("default_model_id")


class ModelListOutputSerializer(serializers.Serializer):
    tier = TierOutputSerializer()
    default_model = serializers.CharField(allow_null=True)
    models = ModelOutputSerializer(many=True)


class ModelListApi(APIView):
    """The models the caller's tier may use, the default one marked."""

    serializer_class = ModelListOutputSerializer

    @extend_schema(responses=ModelListOutputSerializer, operation_id="models_list")
    def get(self, request: Request) -> Response:
        tier = request_tier(request)
        registry = registry_get()
        default = get_default_model(tier, registry=registry)
        default_id = default.id if default else None
        data = {
            "tier": tier,
            "default_model": default_id,
            "models": get_available_models(tier, registry=registry),
        }
        return Response(ModelListOutputSerializer(data, context={"default_model_id": default_id}).data)


class ModelDetailApi(APIView):
    """One model; 403 naming the tier needed when the caller's tier may not use it."""

    permission_classes = [*APIView.permission_classes, CanUseModel]
    serializer_class = ModelOutputSerializer

    @extend_schema(responses=ModelOutputSerializer, operation_id="models_retrieve")
    def get(self, request: Request, model_id: str) -> Response:
        model = get_model_by_id(model_id)
        self.check_object_permissions(request, model)
        default = get_default_model(request_tier(request))
        context = {"default_model_id": default.id if default else None}
        return Response(ModelOutputSerializer(model, context=context).data)
