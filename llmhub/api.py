"""One error shape for every /api endpoint: {"error": {"code", "message", ...extra}}, and the OpenAPI schema that
documents it on every operation (`AutoSchema`)."""

import logging
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.http import Http404
from drf_spectacular import openapi
from drf_spectacular.plumbing import ResolvedComponent, force_instance, get_doc
from drf_spectacular.utils import OpenApiResponse
from rest_framework import exceptions, serializers
from rest_framework.response import Response
from rest_framework.utils import html
from rest_framework.views import set_rollback

from llmhub.errors import ApplicationError, unavailable_error

logger = logging.getLogger(__name__)

logger = logging.getLogger(__name__)


def error_body(*, code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **extra}}


def _drf_code(exc: exceptions.APIException) -> str:
    codes = exc.get_codes()
    return codes if isinstance(codes, str) else exc.default_code


def exception_handler(exc: Exception, context: dict) -> Response | None:
    exc = unavailable_error(exc) or exc
    if isinstance(exc, ApplicationError):
        set_rollback()
        retry_after = getattr(exc, "retry_after", None)
        headers = dict(getattr(exc, "headers", None) or {})  # e.g. a quota refusal's x-ratelimit-* headers
        if retry_after is not None:
            headers["Retry-After"] = str(max(1, round(retry_after)))
        return Response(error_body(code=exc.code, message=exc.message, **exc.extra), status=exc.status, headers=headers)
    if isinstance(exc, RequestDataTooBig):
        # Raised by Django while DRF reads the body; unhandled it would be Django's bare 400 page.
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        return Response(error_body(code="body_too_large", message=f"The request body is larger than {limit} bytes."),
                        status=413)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    if not isinstance(exc, exceptions.APIException):
        # Unforeseen: the API's JSON 500, also with DEBUG on (whose HTML page would show the frames' values).
        request = context.get("request")
        logger.error("Internal Server Error: %s", getattr(request, "path", "?"), exc_info=exc)
        set_rollback()
        return Response(error_body(code="internal_error", message="Internal error."), status=500)

    headers = {}
    if getattr(exc, "auth_header", None):
        headers["WWW-Authenticate"] = exc.auth_header
    if getattr(exc, "wait", None):
        headers["Retry-After"] = str(int(exc.wait))

    set_rollback()
    if isinstance(exc, exceptions.ValidationError):
        fields = exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail}
        body = error_body(code="invalid", message="Invalid input.", fields=fields)
    else:
        body = error_body(code=_drf_code(exc), message=str(exc.detail))
    return Response(body, status=exc.status_code, headers=headers)


def _json_type_error(field: serializers.Field, value: Any) -> str | None:
    """What is wrong with a JSON value's type for `field`, or None. DRF coerces ("1" for an integer, 0 for a
    boolean, 5 for a string); a JSON API takes exactly the types its schema states."""
    if value is None:
        return None  # the field itself knows whether it may be null
    if isinstance(field, serializers.BooleanField):
        return None if isinstance(value, bool) else "Must be a boolean."
    if isinstance(value, bool):
        return None if isinstance(field, serializers.Serializer | serializers.ListField | serializers.DictField) \
            else "Must not be a boolean."
    if isinstance(field, serializers.IntegerField):
        return None if isinstance(value, int) or (isinstance(value, float) and value.is_integer()) \
            else "Must be an integer."
    if isinstance(field, serializers.FloatField):
        return None if isinstance(value, int | float) else "Must be a number."
    if isinstance(field, serializers.DecimalField | serializers.CharField):
        # Decimals are strings, as the API writes them ("1.500000"): a JSON float would lose digits.
        return None if isinstance(value, str) else "Must be a string."
    if isinstance(field, serializers.ListField) and isinstance(value, list):
        errors = {str(index): [error] for index, item in enumerate(value)
                  if (error := _json_type_error(field.child, item))}
        return errors or None
    return None


class StrictSerializer(serializers.Serializer):
    """Takes JSON as its schema states it: refuses fields it does not know (a typo is a 400 rather than silently
    ignored) and values of another JSON type. HTML forms (all strings) keep DRF's coercion: pass data from a
    QueryDict, or the context `{"html_form": True}`.

    `exactly_one_of` names fields of which a request must give exactly one (the schema says so with `oneOf`);
    `input_rules` is JSON Schema a serializer with rules of its own (checked in its `validate`) adds to its input's."""

    exactly_one_of: tuple[str, ...] = ()
    input_rules: dict[str, Any] | None = None

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict) and not html.is_html_input(data):
            errors: dict[str, Any] = {name: ["Unknown field."] for name in sorted(set(data) - set(self.fields))}
            if not self.context.get("html_form"):
                errors.update({name: error if isinstance(error, dict) else [error] for name, value in data.items()
                               if name in self.fields and (error := _json_type_error(self.fields[name], value))})
            if errors:
                raise exceptions.ValidationError(errors)
        return super().to_internal_value(data)

    def validate(self, data: Any) -> Any:
        if self.exactly_one_of and sum(name in data for name in self.exactly_one_of) != 1:
            names = " or ".join(f"'{name}'" for name in self.exactly_one_of)
            raise exceptions.ValidationError(f"Give either {names}.")
        return super().validate(data)


# --- The OpenAPI schema -------------------------------------------------------------------------------------

ERROR_COMPONENT = "Error"
ERROR_SCHEMA = {
    "type": "object",
    "description": "Every error of the API. `code` is machine-readable; other keys depend on the error.",
    "required": ["error"],
    "properties": {"error": {
        "type": "object",
        "required": ["code", "message"],
        "properties": {
            "code": {"type": "string", "example": "invalid"},
            "message": {"type": "string"},
            "fields": {"type": "object", "description": "400 (and 404/403/409 about a field): the messages per input "
                                                        "field; nested fields and list items nest (by index).",
                       "additionalProperties": {"oneOf": [{"type": "array"}, {"type": "object"}]}},
            "required_tier": {"type": "string", "nullable": True, "description": "403 `tier_required`: the lowest "
                                                                                 "tier that may use the model."},
            "attempts": {"type": "array", "items": {"type": "object"},
                         "description": "Generation errors: each model tried and how it failed."},
        },
    }},
}
ERROR_STATUSES: dict[int, str] = {
    400: "Invalid input; `error.fields` holds the messages per field.",
    401: "No valid credentials: a hub API key (`Authorization: Bearer lh-…`) or a session. An expired key is "
         "`api_key_expired`.",
    403: "Not allowed: your tier may not use the model (`tier_required`), a registry model is read-only "
         "(`read_only`), staff only (`staff_only`), keys are created and revoked in a session "
         "(`session_required`), or a session request without its CSRF token.",
    404: "Not found (another user's model is as unknown as a missing one).",
    409: "Conflict with what exists (an id already taken).",
    413: "The request body is too large (`body_too_large`).",
    415: "Unsupported media type: send JSON.",
    429: "Rate limited or out of quota: retry after `Retry-After` seconds.",
    502: "Every upstream model failed (`error.attempts`).",
    503: "A dependency is unavailable (database, cache, task queue) or no model is available: retry later.",
    504: "Every upstream model timed out (`error.attempts`).",
}
_ERROR_REF = {"$ref": f"#/components/schemas/{ERROR_COMPONENT}"}
_RETRY_AFTER = {"Retry-After": {"schema": {"type": "integer", "minimum": 1}, "description": "Seconds to wait."}}


def error_responses(*statuses: int) -> dict[int, OpenApiResponse]:
    """`@extend_schema(responses={200: X, **error_responses(429, 502)})`: errors an operation answers beyond the
    ones `AutoSchema` documents everywhere."""
    return {status: OpenApiResponse(response=_ERROR_REF, description=ERROR_STATUSES[status]) for status in statuses}


def _error_response(status: int) -> dict[str, Any]:
    return {"description": ERROR_STATUSES[status], "content": {"application/json": {"schema": _ERROR_REF}}}


# DRF refuses a NUL character in any string, and a blank one (after trimming) unless blanks are allowed. Stated as
# `not` + an unanchored pattern rather than one anchored pattern: generators build long strings from these cheaply.
_NO_NUL = {"pattern": r"\x00"}
# Python's str.strip() (DRF's trim) also takes \x1c-\x1f and \x85, which JSON Schema's (ECMA-262) \s does not;
# ECMA's takes \ufeff, which Python's does not: a character neither counts as whitespace is required.
_NOT_BLANK = r"[^\s\x1c-\x1f\x85\ufeff]"


class AutoSchema(openapi.AutoSchema):
    """drf-spectacular's schema, made to tell the whole truth: every operation lists the errors it can answer in the
    one error shape (400/413/415 with a body, 404 with a path parameter, 401/403/503 always; more through
    `error_responses`), and request bodies state what `StrictSerializer` enforces."""

    def _get_response_bodies(self, direction: str = "response") -> dict[str, Any]:
        responses = super()._get_response_bodies(direction)
        self.registry.register_on_missing(ResolvedComponent(
            name=ERROR_COMPONENT, type=ResolvedComponent.SCHEMA, object=ERROR_COMPONENT, schema=ERROR_SCHEMA))
        for status in self._error_statuses():
            responses.setdefault(str(status), _error_response(status))
        for status in ("429", "503"):
            if status in responses:
                responses[status]["headers"] = _RETRY_AFTER
        return dict(sorted(responses.items()))

    def _error_statuses(self) -> set[int]:
        statuses = {401, 403, 503}
        if self.method in ("POST", "PUT", "PATCH") and self.get_request_serializer() is not None:
            statuses |= {400, 413, 415}
        if "{" in self.path:
            statuses.add(404)
        return statuses

    def _get_request_body(self, direction: str = "request") -> dict[str, Any] | None:
        body = super()._get_request_body(direction)
        serializer = force_instance(self.get_request_serializer())
        if body is not None and (getattr(serializer, "exactly_one_of", ()) or getattr(serializer, "input_rules", None)):
            body["required"] = True  # no property is required alone, but an empty body lacks the one of them
        return body

    def _map_basic_serializer(self, serializer: serializers.Serializer, direction: str) -> dict[str, Any]:
        schema = super()._map_basic_serializer(serializer, direction)
        if direction == "request" and isinstance(serializer, StrictSerializer):
            schema["additionalProperties"] = False
            if serializer.exactly_one_of:
                schema["oneOf"] = [{"required": [name]} for name in serializer.exactly_one_of]
            if serializer.input_rules:
                schema.update(serializer.input_rules)
            if schema.get("description") == get_doc(StrictSerializer):
                del schema["description"]  # inherited, about the class rather than the input
        return schema

    def _map_serializer_field(self, field: serializers.Field, direction: str, bypass_extensions: bool = False) -> Any:
        schema = super()._map_serializer_field(field, direction, bypass_extensions)
        if direction == "request" and isinstance(schema, dict):
            self._insert_field_validators(field, schema)  # inside lists and dicts too
            self._insert_input_rules(field, schema)
        return schema

    def _insert_input_rules(self, field: serializers.Field, schema: dict[str, Any]) -> None:
        if [branch.get("maxLength") for branch in schema.get("oneOf", ())][1:] == [0]:
            # drf-spectacular's "or blank" branch: "" matches both, which `oneOf` forbids; the first allows "" already.
            schema.update(schema.pop("oneOf")[0])
        if isinstance(field, serializers.DecimalField):
            # DRF's own pattern allows a sign below `min_value`, and "" or ".".
            whole = field.max_digits - field.decimal_places if field.max_digits is not None else None
            places = field.decimal_places
            sign = "" if field.min_value is not None and field.min_value >= 0 else "-?"
            digits = rf"\d{{1,{whole}}}" if whole else r"\d+"
            schema["pattern"] = rf"^{sign}(?:{digits}(?:\.\d{{0,{places}}})?|\.\d{{1,{places}}})$"
        elif isinstance(field, serializers.CharField) and schema.get("type") == "string" \
                and not {"pattern", "format", "enum"} & set(schema):
            schema["not"] = _NO_NUL
            if field.trim_whitespace and not field.allow_blank:
                schema["pattern"] = _NOT_BLANK
