"""The registry API: the models a caller may use (the registry's and their own), their own models' CRUD, the
caller's preferences, and their hub API keys (models' connectivity tests: health/apis.py).

A user's own model is only ever found for its owner: for anyone else it is as unknown as a model that does not
exist (404), in every endpoint. Registry models are read-only here (403); only staff test them.
"""

from typing import Any

from django.urls import reverse
from drf_spectacular.utils import OpenApiResponse, PolymorphicProxySerializer, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from llmhub.api import error_responses
from registry import openapi  # noqa: F401  (registers the API key scheme with drf-spectacular)
from registry.authentication import request_tier
from registry.models import UserLLMConfig
from registry.permissions import CanUseModel, KeysChangedInSession, RegistryModelReadOnly
from registry.selectors import (
    ModelSpec,
    Registry,
    TierSpec,
    api_key_own_get,
    api_keys_list,
    get_available_models,
    get_default_model,
    get_model_by_id,
    get_usable_model,
    preferences_get,
    registry_get,
    user_model_get,
)
from registry.serializers import (
    ApiKeyCreatedOutputSerializer,
    ApiKeyInputSerializer,
    ApiKeyOutputSerializer,
    ModelListOutputSerializer,
    ModelOutputSerializer,
    PreferencesInputSerializer,
    PreferencesOutputSerializer,
    UserModelInputSerializer,
    UserModelOutputSerializer,
    UserModelUpdateInputSerializer,
)
from registry.services import (
    api_key_create_own,
    api_key_revoke,
    preferences_update,
    user_model_create,
    user_model_delete,
    user_model_update,
)

ModelDetailOutput = PolymorphicProxySerializer(
    component_name="ModelDetail", serializers=[ModelOutputSerializer, UserModelOutputSerializer],
    resource_type_field_name=None,
)


def caller_default_model(request: Request, tier: TierSpec, registry: Registry) -> ModelSpec | None:
    """The model a request naming none gets by default: the caller's default when they may use it, else the tier's."""
    preferred = preferences_get(request.user.pk).default_model
    return (get_usable_model(preferred, tier=tier, registry=registry, owner_id=request.user.pk)
            or get_default_model(tier, registry=registry))


def _context(request: Request) -> dict[str, Any]:
    return {"default_model": caller_default_model(request, request_tier(request), registry_get())}


class ModelTargetApi(APIView):
    """Finds the model a URL names: the caller's own (a `UserLLMConfig` row), else a registry model (a
    `ModelSpec`, judged by the view's object permissions)."""

    def model_target(self, request: Request, model_id: str) -> UserLLMConfig | ModelSpec:
        registry = registry_get()
        # The snapshot answers for registry models without a query; an own model it lacks (disabled, or made a
        # moment ago in another process) is looked up.
        if model_id in registry.own_models(request.user.pk) or model_id not in registry.models:
            own = user_model_get(owner_id=request.user.pk, model_id=model_id)
            if own is not None:
                return own
        model = get_model_by_id(model_id, registry=registry)  # the registry's only: 404 when it has none
        self.check_object_permissions(request, model)
        return model


class ModelListApi(APIView):
    """GET: the models the caller may use (the registry models of their tier, then their own), each with its
    status, the default marked. POST: add a model of your own."""

    serializer_class = UserModelInputSerializer

    @extend_schema(responses=ModelListOutputSerializer, operation_id="models_list")
    def get(self, request: Request) -> Response:
        tier = request_tier(request)
        registry = registry_get()
        default = caller_default_model(request, tier, registry)
        data = {
            "tier": tier,
            "default_model": default.id if default else None,
            "models": get_available_models(tier, registry=registry, owner_id=request.user.pk),
        }
        return Response(ModelListOutputSerializer(data, context={"default_model": default}).data)

    @extend_schema(request=UserModelInputSerializer, responses={201: UserModelOutputSerializer, **error_responses(409)},
                   operation_id="models_create")
    def post(self, request: Request) -> Response:
        serializer = UserModelInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        model = user_model_create(owner=request.user, **serializer.validated_data)
        return Response(UserModelOutputSerializer(model, context=_context(request)).data, status=201,
                        headers={"Location": reverse("models-detail", args=[model.slug])})


class ModelDetailApi(ModelTargetApi):
    """A model the caller may use. Their own models can be changed (PUT, PATCH) and deleted; registry models
    are read-only here (403 "read_only")."""

    permission_classes = [*APIView.permission_classes, RegistryModelReadOnly, CanUseModel]
    serializer_class = UserModelUpdateInputSerializer

    @extend_schema(responses=ModelDetailOutput, operation_id="models_retrieve")
    def get(self, request: Request, model_id: str) -> Response:
        model = self.model_target(request, model_id)
        serializer = UserModelOutputSerializer if isinstance(model, UserLLMConfig) else ModelOutputSerializer
        return Response(serializer(model, context=_context(request)).data)

    @extend_schema(request=UserModelUpdateInputSerializer, responses=UserModelOutputSerializer,
                   operation_id="models_update")
    def put(self, request: Request, model_id: str) -> Response:
        return self._update(request, model_id, partial=False)

    @extend_schema(request=UserModelUpdateInputSerializer, responses=UserModelOutputSerializer,
                   operation_id="models_partial_update")
    def patch(self, request: Request, model_id: str) -> Response:
        return self._update(request, model_id, partial=True)

    def _update(self, request: Request, model_id: str, *, partial: bool) -> Response:
        model = self.model_target(request, model_id)
        serializer = UserModelUpdateInputSerializer(data=request.data, partial=partial, context={"model_id": model_id})
        serializer.is_valid(raise_exception=True)
        model = user_model_update(model=model, data=serializer.validated_data)
        return Response(UserModelOutputSerializer(model, context=_context(request)).data)

    @extend_schema(responses={204: OpenApiResponse(description="Deleted; its usage history stays.")},
                   operation_id="models_destroy")
    def delete(self, request: Request, model_id: str) -> Response:
        user_model_delete(model=self.model_target(request, model_id))
        return Response(status=204)


class PreferencesApi(APIView):
    """Your default model, default per task type (`generation`, `translation`, `code`) and favourites. A request
    that names no model uses its task's default, else your default, else your tier's."""

    serializer_class = PreferencesInputSerializer

    @extend_schema(responses=PreferencesOutputSerializer, operation_id="preferences_retrieve")
    def get(self, request: Request) -> Response:
        return Response(PreferencesOutputSerializer(preferences_get(request.user.pk)).data)

    @extend_schema(request=PreferencesInputSerializer, operation_id="preferences_update",
                   responses={200: PreferencesOutputSerializer, **error_responses(404)})
    def put(self, request: Request) -> Response:
        return self._update(request, partial=False)

    @extend_schema(request=PreferencesInputSerializer, operation_id="preferences_partial_update",
                   responses={200: PreferencesOutputSerializer, **error_responses(404)})
    def patch(self, request: Request) -> Response:
        return self._update(request, partial=True)

    def _update(self, request: Request, *, partial: bool) -> Response:
        serializer = PreferencesInputSerializer(data=request.data, partial=partial)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data if partial else {"default_model": "", "task_defaults": {}, "favourites": [],
                                                          **serializer.validated_data}
        preferences_update(user=request.user, data=data)
        return Response(PreferencesOutputSerializer(preferences_get(request.user.pk)).data)


# --- Hub API keys ---------------------------------------------------------------------------------------------

class ApiKeyListApi(APIView):
    """GET: your hub API keys, newest first (never the keys themselves). POST: create one; the answer holds the key,
    shown this once. Creating needs a signed-in session (403 `session_required` with an API key); at most
    `LLMHUB_MAX_API_KEYS_PER_USER` keys in use (400 `max_api_keys_reached`); limits above yours are refused (400
    `limit_above_owner`)."""

    permission_classes = [*APIView.permission_classes, KeysChangedInSession]
    serializer_class = ApiKeyInputSerializer

    @extend_schema(responses=ApiKeyOutputSerializer(many=True), operation_id="keys_list")
    def get(self, request: Request) -> Response:
        return Response(ApiKeyOutputSerializer(api_keys_list(user=request.user), many=True).data)

    @extend_schema(request=ApiKeyInputSerializer, responses={201: ApiKeyCreatedOutputSerializer},
                   operation_id="keys_create")
    def post(self, request: Request) -> Response:
        serializer = ApiKeyInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        api_key, raw_key = api_key_create_own(user=request.user, **serializer.validated_data)
        created = api_key_own_get(user=request.user, key_id=api_key.pk)
        return Response(ApiKeyCreatedOutputSerializer((created, raw_key)).data, status=201,
                        headers={"Cache-Control": "no-store"})


class ApiKeyRevokeApi(APIView):
    """Revoke one of your keys: every app process refuses it within a second or so. Revoking it again changes
    nothing. Needs a signed-in session (403 `session_required` with an API key)."""

    permission_classes = [*APIView.permission_classes, KeysChangedInSession]

    @extend_schema(request=None, responses=ApiKeyOutputSerializer, operation_id="keys_revoke")
    def post(self, request: Request, key_id: int) -> Response:
        api_key = api_key_revoke(api_key=api_key_own_get(user=request.user, key_id=key_id))
        return Response(ApiKeyOutputSerializer(api_key).data)
