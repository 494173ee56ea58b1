"""The one family of domain errors. A view never builds an error body itself: it raises one of these
and `llmhub.api.exception_handler` (or `/v1`'s OpenAI renderer) turns it into a response."""

from typing import Any


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
