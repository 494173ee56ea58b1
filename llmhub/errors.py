"""The one family of domain errors. A view never builds an error body itself: it raises one of these
and `llmhub.api.exception_handler` (or `/v1`'s OpenAI renderer) turns it into a response."""

import logging
import sys
from typing import Any

from llmhub.db import CONNECTION_ERRORS

# unavailable_error's warnings keep the logger they had in llmhub.api (which imports DRF: /v1 does not need it).
logger = logging.getLogger("llmhub.api")



def is_redis_unavailable(exc: BaseException) -> bool:
    """A Redis connection or timeout error. Looked up lazily: an embedded process never imports redis (70 ms)."""
    exceptions = sys.modules.get("redis.exceptions")
    return exceptions is not None and isinstance(exc, (exceptions.ConnectionError, exceptions.TimeoutError))


class ApplicationError(Exception):
    status = 400
    code = "invalid_request"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None,
                 extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.extra = extra or {}


class NotFound(ApplicationError):
    status = 404
    code = "not_found"


class TierRequired(ApplicationError):
    """The caller's tier may not use a model; `extra["required_tier"]` names the lowest tier that may."""

    status = 403
    code = "tier_required"


class ConfigurationError(ApplicationError):
    status = 400
    code = "invalid_configuration"


class ServiceUnavailable(ApplicationError):
    """A dependency (the database, the task queue, Redis) is unreachable for now: 503 with Retry-After."""

    status = 503
    code = "service_unavailable"
    retry_after = 5


def unavailable_error(exc: BaseException) -> ServiceUnavailable | None:
    """A dependency that did not answer (the database, Redis), as a 503 the client may retry; None for any
    other error. Every renderer (this handler, /v1, the 500 page) asks it before answering 500."""
    if isinstance(exc, CONNECTION_ERRORS):
        error = ServiceUnavailable("The database is unavailable; try again in a moment.", code="database_unavailable")
    elif is_redis_unavailable(exc):
        error = ServiceUnavailable("The cache is unavailable; try again in a moment.", code="cache_unavailable")
    else:
        return None
    # The error's class and first line say which dependency and why; no request data, no secret.
    logger.warning("%s: %s: %s", error.code, type(exc).__name__, str(exc).partition("\n")[0])
    return error
