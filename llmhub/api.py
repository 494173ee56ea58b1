"""One error shape for every /api endpoint: {"error": {"code", "message", ...extra}}."""

import logging
from typing import Any

import redis
from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.http import Http404
from rest_framework import exceptions, serializers
from rest_framework.response import Response
from rest_framework.views import set_rollback

from llmhub.db import CONNECTION_ERRORS
from llmhub.errors import ApplicationError, ServiceUnavailable

logger = logging.getLogger(__name__)

REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)

logger = logging.getLogger(__name__)


def error_body(*, code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **extra}}


def _drf_code(exc: exceptions.APIException) -> str:
    codes = exc.get_codes()
    return codes if isinstance(codes, str) else exc.default_code


def unavailable_error(exc: BaseException) -> ServiceUnavailable | None:
    """A dependency that did not answer (the database, Redis), as a 503 the client may retry; None for any
    other error. Every renderer (this handler, /v1, the 500 page) asks it before answering 500."""
    if isinstance(exc, CONNECTION_ERRORS):
        error = ServiceUnavailable("The database is unavailable; try again in a moment.", code="database_unavailable")
    elif isinstance(exc, REDIS_ERRORS):
        error = ServiceUnavailable("The cache is unavailable; try again in a moment.", code="cache_unavailable")
    else:
        return None
    # The error's class and first line say which dependency and why; no request data, no secret.
    logger.warning("%s: %s: %s", error.code, type(exc).__name__, str(exc).partition("\n")[0])
    return error


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


class StrictSerializer(serializers.Serializer):
    """Refuses fields it does not know, so a typo is a 400 rather than silently ignored."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise exceptions.ValidationError({name: ["Unknown field."] for name in unknown})
        return super().to_internal_value(data)
