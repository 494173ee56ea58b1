"""Tier checks as DRF permission classes."""

from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from registry.authentication import request_tier
from registry.selectors import ModelSpec, check_model_access


class CanUseModel(BasePermission):
    """Object permission: the caller's tier may use the model. Raises `TierRequired`, whose body names
    the tier needed."""

    message = "Your tier may not use this model."
    code = "tier_required"

    def has_object_permission(self, request: Request, view, obj: ModelSpec) -> bool:
        check_model_access(request_tier(request), obj)
        return True
