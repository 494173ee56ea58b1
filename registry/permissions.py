"""Tier and role checks as DRF permission classes. Object permissions here judge registry models (`ModelSpec`):
a user's own models are found only for their owner, which is their whole permission check."""

from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request

from registry.authentication import Principal, request_tier
from registry.selectors import ModelSpec, check_model_access


class CanUseModel(BasePermission):
    """Object permission: the caller's tier may use the model. Raises `TierRequired`, whose body names
    the tier needed."""

    message = "Your tier may not use this model."
    code = "tier_required"

    def has_object_permission(self, request: Request, view, obj: ModelSpec) -> bool:
        check_model_access(request_tier(request), obj)
        return True


class RegistryModelReadOnly(BasePermission):
    """Object permission: a registry model may be read here, never changed (that is admin's job)."""

    message = "Registry models are changed in admin."
    code = "read_only"

    def has_object_permission(self, request: Request, view, obj: ModelSpec) -> bool:
        return request.method in SAFE_METHODS


class CanTestRegistryModel(BasePermission):
    """Object permission: only staff start or read connectivity tests of registry models."""

    message = "Only staff may test registry models."
    code = "staff_only"

    def has_object_permission(self, request: Request, view, obj: ModelSpec) -> bool:
        return bool(request.user and request.user.is_staff)


class KeysChangedInSession(BasePermission):
    """A hub API key may list its owner's keys; creating or revoking one takes a signed-in session, so that a leaked
    key can neither mint a successor that outlives its revocation nor revoke its owner's other keys."""

    message = "API keys are created and revoked when signed in (the /keys/ page, or this API with a session), " \
              "not with an API key."
    code = "session_required"

    def has_permission(self, request: Request, view) -> bool:
        return request.method in SAFE_METHODS or not isinstance(request.auth, Principal)
