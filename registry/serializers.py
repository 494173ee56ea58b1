"""Input and output serializers of the registry API, shared with the server-rendered forms.

Inputs only parse: the services (registry/services.py) decide what may be saved (a safe base URL, a free id,
models a user may use). An API key is write-only: outputs say whether one is set and its last 4 characters.
"""

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from llmhub.api import StrictSerializer
from registry.limits import METRICS, PERIODS, LimitSpec, limit_problems
from registry.models import ApiKey, QuotaLimit, UserLLMConfig, UserModelPreferences
from registry.selectors import (
    API_KEY_STATES,
    CAPABILITIES,
    ModelSpec,
    PreferencesSpec,
    api_key_state,
    model_status_read,
    registry_get,
)
from registry.validators import header_name_validator, header_value_validator  # noqa: F401  (re-exported)

MODEL_ID_MAX_LENGTH = UserLLMConfig._meta.get_field("slug").max_length
API_KEY_MAX_LENGTH = 1000




def _default(name: str) -> Any:
    return UserLLMConfig._meta.get_field(name).default


# --- Status -----------------------------------------------------------------------------------------------

class BreakerOutputSerializer(serializers.Serializer):
    state = serializers.ChoiceField(choices=["closed", "open", "half_open"],
                                    help_text="closed: traffic flows; open: the model is skipped; half_open: one trial "
                                              "request may go (its answer closes the breaker, a failure opens it again).")
    reason = serializers.CharField(allow_blank=True, help_text="Why it opened (generic words, never an upstream body).")
    since = serializers.DateTimeField(allow_null=True, help_text="When it opened.")
    retry_at = serializers.DateTimeField(allow_null=True, help_text="While open: when it turns half-open.")
    cooled_until = serializers.DateTimeField(allow_null=True,
                                             help_text="After an upstream 429: the model is skipped until then.")


class HealthOutputSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=["healthy", "degraded", "down", "unknown"])
    last_checked_at = serializers.DateTimeField(allow_null=True)
    last_latency_ms = serializers.FloatField(allow_null=True)
    breaker = BreakerOutputSerializer(help_text="The model's circuit breaker, shared by every app process.")


def _status(model: ModelSpec | None) -> dict[str, Any]:
    return HealthOutputSerializer(model_status_read(model)).data


# --- Models -----------------------------------------------------------------------------------------------

class TierOutputSerializer(serializers.Serializer):
    slug = serializers.CharField()
    name = serializers.CharField()
    rank = serializers.IntegerField()


class ModelHeadSerializer(serializers.Serializer):
    """What names a model and prices it, wherever one is shown (the model list, the analytics)."""

    id = serializers.CharField()
    display_name = serializers.CharField()
    provider = serializers.CharField()
    provider_name = serializers.CharField()
    owned = serializers.BooleanField(help_text="One of the caller's own models.")
    input_price_per_million = serializers.DecimalField(max_digits=12, decimal_places=6)
    output_price_per_million = serializers.DecimalField(max_digits=12, decimal_places=6)


class ModelOutputSerializer(ModelHeadSerializer):
    """A model as the caller may use it: a registry model, or one of their own (`owned`)."""

    capabilities = serializers.SerializerMethodField()
    context_window = serializers.IntegerField()
    allowed_tiers = serializers.ListField(child=serializers.CharField())
    required_tier = serializers.CharField(source="required_tier.slug", allow_null=True, default=None)
    fallbacks = serializers.ListField(child=serializers.CharField())
    fallbacks_auto = serializers.BooleanField(help_text="Falls back to equivalent models chosen by the routing policy.")
    is_default = serializers.SerializerMethodField()
    status = serializers.SerializerMethodField()

    def get_capabilities(self, model: ModelSpec) -> list[str]:
        return sorted(model.capabilities)

    def get_is_default(self, model: ModelSpec) -> bool:
        default: ModelSpec | None = self.context.get("default_model")
        return default is not None and default.key == model.key

    @extend_schema_field(HealthOutputSerializer)
    def get_status(self, model: ModelSpec) -> dict[str, Any]:
        return _status(model)


class ModelListOutputSerializer(serializers.Serializer):
    tier = TierOutputSerializer()
    default_model = serializers.CharField(allow_null=True, help_text="Your default model when one is set and you "
                                                                     "may use it, else your tier's.")
    models = ModelOutputSerializer(many=True)


class CapabilitiesSerializer(StrictSerializer):
    streaming = serializers.BooleanField(default=_default("supports_streaming"))
    json_mode = serializers.BooleanField(default=_default("supports_json_mode"))
    tools = serializers.BooleanField(default=_default("supports_tools"))
    vision = serializers.BooleanField(default=_default("supports_vision"))


class UserModelInputSerializer(StrictSerializer):
    """Adds a model of your own (POST). Your endpoint must be OpenAI-compatible and reachable from our servers:
    https, on a public address."""

    id = serializers.SlugField(source="slug", max_length=MODEL_ID_MAX_LENGTH,
                               help_text="The id you use in API calls; unique among your models and the registry's.")
    display_name = serializers.CharField(max_length=UserLLMConfig._meta.get_field("display_name").max_length)
    model = serializers.CharField(source="upstream_model",
                                  max_length=UserLLMConfig._meta.get_field("upstream_model").max_length,
                                  help_text="The model name sent to your endpoint.")
    base_url = serializers.URLField(max_length=UserLLMConfig._meta.get_field("base_url").max_length,
                                    help_text="e.g. https://api.example.com/v1")
    api_key = serializers.CharField(max_length=API_KEY_MAX_LENGTH, write_only=True, required=False,
                                    style={"input_type": "password"}, validators=[header_value_validator],
                                    help_text="Write-only: stored encrypted, never shown again. Printable ASCII. "
                                              "Leave it out for an endpoint that takes no key.")
    enabled = serializers.BooleanField(default=_default("enabled"))
    capabilities = CapabilitiesSerializer(default=lambda: {name: _default(f"supports_{name}") for name in CAPABILITIES})
    context_window = serializers.IntegerField(min_value=1, max_value=100_000_000, default=_default("context_window"))
    input_price_per_million = serializers.DecimalField(max_digits=12, decimal_places=6, min_value=0,
                                                       default=_default("input_price_per_million"))
    output_price_per_million = serializers.DecimalField(max_digits=12, decimal_places=6, min_value=0,
                                                        default=_default("output_price_per_million"))


class UserModelUpdateInputSerializer(UserModelInputSerializer):
    """Changes one of your models (PUT: every field, the ones left out back to their defaults; PATCH: the given
    ones). The key is kept unless you give one, which you must when changing the base URL."""

    id = serializers.SlugField(source="slug", max_length=MODEL_ID_MAX_LENGTH, required=False,
                               help_text="A model's id cannot change; accepted when it is the current one.")
    api_key = serializers.CharField(max_length=API_KEY_MAX_LENGTH, write_only=True, required=False,
                                    style={"input_type": "password"}, validators=[header_value_validator],
                                    help_text="Write-only. Leave it out to keep the stored key; required with a new "
                                              "base URL.")

    def validate_id(self, value: str) -> str:
        if value != self.context["model_id"]:
            raise serializers.ValidationError("A model's id cannot change: add a new model instead.")
        return value

    def validate(self, data: dict[str, Any]) -> dict[str, Any]:
        data.pop("slug", None)
        return data


class UserModelOutputSerializer(serializers.Serializer):
    """One of your own models, as you configured it (never its key)."""

    id = serializers.CharField(source="slug")
    display_name = serializers.CharField()
    model = serializers.CharField(source="upstream_model")
    base_url = serializers.CharField()
    enabled = serializers.BooleanField()
    owned = serializers.SerializerMethodField()
    capabilities = serializers.SerializerMethodField()
    context_window = serializers.IntegerField()
    input_price_per_million = serializers.DecimalField(max_digits=12, decimal_places=6)
    output_price_per_million = serializers.DecimalField(max_digits=12, decimal_places=6)
    key_set = serializers.SerializerMethodField()
    key_last4 = serializers.CharField(source="api_key_last4", help_text="Empty for keys shorter than 12 characters.")
    is_default = serializers.SerializerMethodField()
    status = serializers.SerializerMethodField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()

    def get_owned(self, model: UserLLMConfig) -> bool:
        return True

    def get_capabilities(self, model: UserLLMConfig) -> list[str]:
        return sorted(name for name in CAPABILITIES if getattr(model, f"supports_{name}"))

    def get_key_set(self, model: UserLLMConfig) -> bool:
        return bool(model.api_key_encrypted)

    def get_is_default(self, model: UserLLMConfig) -> bool:
        default: ModelSpec | None = self.context.get("default_model")
        return default is not None and (default.owner_id, default.id) == (model.owner_id, model.slug)

    @extend_schema_field(HealthOutputSerializer)
    def get_status(self, model: UserLLMConfig) -> dict[str, Any]:
        # A disabled model is not in the registry snapshot: it takes no traffic, its status is unknown.
        return _status(registry_get().own_models(model.owner_id).get(model.slug))


# --- Preferences ------------------------------------------------------------------------------------------

def _model_id_field(**kwargs: Any) -> serializers.CharField:
    return serializers.CharField(max_length=MODEL_ID_MAX_LENGTH, allow_blank=True, allow_null=True, required=False,
                                 **kwargs)


class TaskDefaultsSerializer(StrictSerializer):
    generation = _model_id_field()
    translation = _model_id_field()
    code = _model_id_field()


class PreferencesInputSerializer(StrictSerializer):
    """Your default model, default per task type and favourites: ids of models you may use (yours, or registry
    models your tier allows). PUT replaces them all; PATCH the ones given (`task_defaults` as a whole)."""

    default_model = _model_id_field(help_text="Used when a request names no model and its task has no default.")
    task_defaults = TaskDefaultsSerializer(required=False)
    favourites = serializers.ListField(child=serializers.CharField(max_length=MODEL_ID_MAX_LENGTH), max_length=100,
                                       required=False)


class PreferencesOutputSerializer(serializers.Serializer):
    default_model = serializers.SerializerMethodField()
    task_defaults = serializers.SerializerMethodField()
    favourites = serializers.ListField(child=serializers.CharField())

    def get_default_model(self, preferences: PreferencesSpec) -> str | None:
        return preferences.default_model or None

    @extend_schema_field(TaskDefaultsSerializer)
    def get_task_defaults(self, preferences: PreferencesSpec) -> dict[str, str | None]:
        return {task: preferences.task_defaults.get(task) for task in UserModelPreferences.TASK_TYPES}



# --- Hub API keys -----------------------------------------------------------------------------------------

_LIMIT_VALUE_SCHEMA = {
    "oneOf": [{"type": "integer", "minimum": 0, "maximum": 10**13 - 1},
              {"type": "string", "pattern": r"^\d{1,13}(\.\d{1,6})?$"}],
    "description": "Requests or tokens (a whole number), or cost in the models' price currency (a decimal string "
                   "with at most 6 places, e.g. \"5.00\").",
}


@extend_schema_field(_LIMIT_VALUE_SCHEMA)
class LimitValueField(serializers.Field):
    """A limit's value as the registry file writes it: a whole number, or a decimal string (cost). Checked against
    its metric by the limit's serializer."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, bool) or not isinstance(data, int | str):
            raise serializers.ValidationError("Must be a whole number or a decimal string.")
        return data

    def to_representation(self, value: Any) -> Any:
        return value


class LimitInputSerializer(StrictSerializer):
    """One limit, in the shape of a tier's limits in the registry file."""

    metric = serializers.ChoiceField(choices=list(METRICS))
    period = serializers.ChoiceField(choices=list(PERIODS))
    limit = LimitValueField()
    model = serializers.CharField(max_length=MODEL_ID_MAX_LENGTH, required=False, allow_blank=True,
                                  help_text="A model id: the limit counts only requests for that model.")

    def validate(self, data: dict[str, Any]) -> dict[str, Any]:
        value, problems = limit_problems(metric=data["metric"], limit=data["limit"], where="limit")
        if problems:
            raise serializers.ValidationError({"limit": [problem.removeprefix("limit: ") for problem in problems]})
        return {**data, "limit": value}


class LimitOutputSerializer(serializers.Serializer):
    metric = serializers.ChoiceField(choices=list(METRICS))
    period = serializers.ChoiceField(choices=list(PERIODS))
    limit = LimitValueField()
    model = serializers.CharField(allow_null=True)

    def to_representation(self, row: QuotaLimit) -> dict[str, Any]:
        return LimitSpec(metric=row.metric, period=row.period, limit=row.limit, model=row.model).as_dict()


class ApiKeyInputSerializer(StrictSerializer):
    """A new hub API key of your own. Its limits are counted per key, on top of yours, and may not be above yours."""

    name = serializers.CharField(max_length=ApiKey._meta.get_field("name").max_length, required=False,
                                 allow_blank=True, help_text="A label for you, e.g. where the key is used.")
    expires_at = serializers.DateTimeField(required=False, allow_null=True,
                                           help_text="When the key stops working (in the future); none = never.")
    limits = serializers.ListField(child=LimitInputSerializer(), required=False, max_length=20,
                                   help_text="The key's own limits, in the shape of a tier's limits.")


class ApiKeyOutputSerializer(serializers.Serializer):
    """One of your hub API keys: never the key itself (shown once, when created) nor anything derived from it but
    its first characters."""

    id = serializers.IntegerField()
    name = serializers.CharField()
    prefix = serializers.CharField(help_text="The key's first characters, to recognise it.")
    created_at = serializers.DateTimeField()
    last_used_at = serializers.DateTimeField(allow_null=True, help_text="Accurate to about a minute.")
    expires_at = serializers.DateTimeField(allow_null=True)
    revoked_at = serializers.DateTimeField(allow_null=True)
    state = serializers.SerializerMethodField()
    limits = LimitOutputSerializer(many=True)

    @extend_schema_field(serializers.ChoiceField(choices=API_KEY_STATES))
    def get_state(self, api_key: ApiKey) -> str:
        return api_key_state(api_key)


class ApiKeyCreatedOutputSerializer(ApiKeyOutputSerializer):
    key = serializers.CharField(help_text="The key itself: shown this once, never again. Store it now.")

    def to_representation(self, instance: tuple[ApiKey, str]) -> dict[str, Any]:
        api_key, raw_key = instance
        return {**ApiKeyOutputSerializer(api_key).data, "key": raw_key}
