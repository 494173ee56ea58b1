from rest_framework.permissions import BasePermission
from rest_framework.request import Request


class IsStaff(BasePermission):
    """Only staff read the recommendations (they are about every tier's traffic)."""

    message = "Only staff may read recommendations."
    code = "staff_only"

    def has_permission(self, request: Request, view) -> bool:
        return bool(request.user and request.user.is_staff)
