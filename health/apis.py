"""The health API: connectivity tests of a model (`/api/models/<id>/test`, `/api/models/<id>/tests/`). Found as
the registry API finds models: a user's own model only for its owner (404 for anyone else); only staff test
registry models."""

from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from health.model_tests import model_test_start
from health.selectors import model_test_get, model_tests_recent
from health.serializers import ModelTestOutputSerializer, ModelTestStartOutputSerializer
from registry.apis import ModelTargetApi
from registry.models import LLMModel, UserLLMConfig
from registry.permissions import CanTestRegistryModel
from registry.selectors import ModelSpec


def _test_subject(model: UserLLMConfig | ModelSpec) -> dict[str, int]:
    return {"user_model_id": model.pk} if isinstance(model, UserLLMConfig) else {"llm_model_id": model.pk}


class ModelTestStartApi(ModelTargetApi):
    """Start a connectivity test of one of your models (staff: of a registry model too). Answers 202 with the
    test's id; follow it at /api/models/<id>/tests/<test_id>/."""

    permission_classes = [*APIView.permission_classes, CanTestRegistryModel]

    @extend_schema(request=None, responses={202: ModelTestStartOutputSerializer}, operation_id="models_test")
    def post(self, request: Request, model_id: str) -> Response:
        model = self.model_target(request, model_id)
        if isinstance(model, UserLLMConfig):
            test = model_test_start(user_model=model, requested_by=request.user)
        else:
            test = model_test_start(llm_model=LLMModel.objects.get(pk=model.pk), requested_by=request.user)
        return Response(ModelTestStartOutputSerializer(test).data, status=202)


class ModelTestListApi(ModelTargetApi):
    """The model's recent connectivity tests, newest first."""

    permission_classes = [*APIView.permission_classes, CanTestRegistryModel]
    serializer_class = ModelTestOutputSerializer

    @extend_schema(responses=ModelTestOutputSerializer(many=True), operation_id="models_tests_list")
    def get(self, request: Request, model_id: str) -> Response:
        model = self.model_target(request, model_id)
        return Response(ModelTestOutputSerializer(model_tests_recent(**_test_subject(model)), many=True).data)


class ModelTestDetailApi(ModelTargetApi):
    """One connectivity test of the model: its state and, once finished, its result."""

    permission_classes = [*APIView.permission_classes, CanTestRegistryModel]
    serializer_class = ModelTestOutputSerializer

    @extend_schema(responses=ModelTestOutputSerializer, operation_id="models_tests_retrieve")
    def get(self, request: Request, model_id: str, test_id: int) -> Response:
        model = self.model_target(request, model_id)
        return Response(ModelTestOutputSerializer(model_test_get(test_id=test_id, **_test_subject(model))).data)
