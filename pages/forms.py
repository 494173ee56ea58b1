"""HTML forms on the API's own input serializers: the same fields, rules and error messages as the API.

A `SerializerForm` turns a POSTed form into the JSON-like data the API would receive, runs the serializer, and
keeps the errors in the API's `fields` shape, so a service's `ApplicationError` about a field (a name clash, an
unsafe base URL) lands beside the field too.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.http import QueryDict
from rest_framework import serializers

from llmhub.errors import ApplicationError
from registry.models import UserLLMConfig
from registry.selectors import CAPABILITIES

INPUT_TYPES: tuple[tuple[type[serializers.Field], str], ...] = (
    (serializers.BooleanField, "checkbox"),
    (serializers.URLField, "url"),
    (serializers.IntegerField, "number"),
    (serializers.DecimalField, "number"),
)


# Advice after a refused base URL, by a phrase of the refusal (registry/ssrf.py), the first that matches.
_PUBLIC_ONLY = "llmhub calls only endpoints on the public internet: use the provider's public https URL."
URL_ADVICE: tuple[tuple[str, str], ...] = (
    ("cloud metadata", "That address belongs to a cloud metadata service, never an LLM endpoint: use the provider's "
                       "public URL (e.g. https://api.openai.com/v1)."),
    ("only https", "Start the address with https:// (plain http is only for hosts the operator allows)."),
    ("could not be resolved", "Check the host name for a typo: it must resolve on the public internet."),
    ("timed out", "The host name did not resolve in time: check it, or try again."),
    ("user name or password", "Put the key in the API key field, not in the address."),
    ("Enter a valid URL", "Give the endpoint's full address, e.g. https://api.example.com/v1."),
    *((phrase, _PUBLIC_ONLY) for phrase in ("loopback", "private", "link-local", "local or internal",
                                            "single-label", "reserved", "non-public", "shared", "unspecified")),
)


def _sentence(message: str) -> str:
    message = message.strip()
    message = message[:1].upper() + message[1:]
    return message if message.endswith((".", "!", "?")) else message + "."


def advised(name: str, message: str) -> str:
    """A field's error as a sentence, with advice where the API's own words give none."""
    text = _sentence(str(message))
    if name == "base_url":
        advice = next((advice for phrase, advice in URL_ADVICE if phrase in text), None)
        if advice:
            return f"{text} {advice}"
    return text


@dataclass(frozen=True, slots=True)
class FormField:
    name: str  # nested fields are "parent.child", as DRF's HTML forms name them
    label: str
    help_text: str
    input_type: str
    value: Any
    errors: list[str]
    max_length: int | None
    step: str | None

    @property
    def id(self) -> str:
        return "id_" + self.name.replace(".", "_")

    @property
    def checked(self) -> bool:
        return self.value in (True, "true", "on", "1")


def _input_type(field: serializers.Field) -> str:
    if field.style.get("input_type"):
        return field.style["input_type"]
    return next((name for kind, name in INPUT_TYPES if isinstance(field, kind)), "text")


def _step(field: serializers.Field) -> str | None:
    if isinstance(field, serializers.DecimalField):
        return "any"
    return "1" if isinstance(field, serializers.IntegerField) else None


def _blank_dropped(field: serializers.Field) -> bool:
    """A blank input means "not given" unless the field takes blanks, or must be given (then the serializer says
    "may not be blank", as the API would)."""
    return not (field.required or getattr(field, "allow_blank", False))


def _from_post(fields: Mapping[str, serializers.Field], post: QueryDict, prefix: str = "") -> dict[str, Any]:
    data: dict[str, Any] = {}
    for name, field in fields.items():
        if field.read_only:
            continue
        key = prefix + name
        if isinstance(field, serializers.Serializer):
            data[name] = _from_post(field.fields, post, prefix=f"{key}.")
        elif isinstance(field, serializers.BooleanField):
            data[name] = key in post  # an unticked checkbox sends nothing
        elif key in post and not (post[key] == "" and _blank_dropped(field)):
            data[name] = post[key]
    return data


class SerializerForm:
    """`form["base_url"]` and `form["capabilities.streaming"]` give what a template needs to draw a field."""

    def __init__(self, serializer_class: type[serializers.Serializer], *, initial: Mapping[str, Any] | None = None,
                 post: QueryDict | None = None, exclude: tuple[str, ...] = (),
                 context: Mapping[str, Any] | None = None, labels: Mapping[str, str] | None = None) -> None:
        # html_form: the posted values are strings, converted by the serializer's fields (JSON takes exact types).
        self.serializer = serializer_class(context={"html_form": True, **(context or {})})
        self.labels = dict(labels or {})
        self.fields = {name: field for name, field in self.serializer.fields.items() if name not in exclude}
        self.data = _from_post(self.fields, post) if post is not None else dict(initial or {})
        self.bound = post is not None
        self.errors: dict[str, Any] = {}
        self.validated_data: dict[str, Any] = {}

    def is_valid(self) -> bool:
        serializer = type(self.serializer)(data=self.data, context=self.serializer.context)
        if serializer.is_valid():
            self.validated_data = dict(serializer.validated_data)
            return True
        self.errors = dict(serializer.errors)
        return False

    def add_problems(self, problems: Mapping[str, list[str]]) -> None:
        """Refusals found beside the serializer's (see registry.services.user_model_input_problems), so that every
        problem shows in one round trip; a field keeps the serializer's error when it has one."""
        for name, messages in problems.items():
            self.errors.setdefault(name, messages)

    def add_error(self, error: ApplicationError) -> None:
        """A service's refusal: beside its fields when it names them, else above the form."""
        fields = error.extra.get("fields")
        if isinstance(fields, Mapping) and fields:
            self.errors.update(fields)
        else:
            self.errors.setdefault("non_field_errors", []).append(error.message)

    @property
    def non_field_errors(self) -> list[str]:
        return [str(message) for message in self.errors.get("non_field_errors", [])]

    def __getitem__(self, name: str) -> FormField:
        *parents, last = name.split(".")
        fields, value, errors = self.fields, self.data, self.errors
        for parent in parents:
            fields = fields[parent].fields
            value = value.get(parent) or {}
            errors = (errors.get(parent) or {}) if isinstance(errors, Mapping) else {}
        field = fields[last]
        if field.write_only and not isinstance(field, serializers.BooleanField):
            shown = ""  # a key is never sent back to the browser, not even the one just typed
        elif last in value:
            shown = value[last]
        elif not self.bound and field.default is not serializers.empty:
            shown = field.default() if callable(field.default) else field.default
        else:
            shown = ""
        field_errors = errors.get(last, []) if isinstance(errors, Mapping) else []
        return FormField(
            name=name, label=self.labels.get(name) or field.label or last, help_text=str(field.help_text or ""),
            input_type=_input_type(field), value=shown,
            errors=[advised(last, message) for message in field_errors] if isinstance(field_errors, list) else [],
            max_length=getattr(field, "max_length", None), step=_step(field),
        )


def user_model_initial(model: UserLLMConfig) -> dict[str, Any]:
    """An own model as its edit form starts: the fields of the API's input, never its key."""
    return {
        "id": model.slug, "display_name": model.display_name, "model": model.upstream_model, "base_url": model.base_url,
        "enabled": model.enabled, "context_window": model.context_window,
        "capabilities": {name: getattr(model, f"supports_{name}") for name in CAPABILITIES},
        "input_price_per_million": _decimal_plain(model.input_price_per_million),
        "output_price_per_million": _decimal_plain(model.output_price_per_million),
    }


def _decimal_plain(value: Decimal) -> str:
    """1.5, not 1.500000 (the column's six places)."""
    return f"{value.normalize():f}"
