"""Hub API keys (`Authorization: Bearer lh-…`) and the caller's tier, memoised per snapshot version so
a warm request authenticates without a query."""

import hmac
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.utils import timezone
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.request import Request

from llmhub.db import db_read_in_thread
from llmhub.errors import ApplicationError
from registry.key_usage import api_key_used
from registry.limits import limits_get, limits_snapshot
from registry.models import ApiKey, QuotaLimit
from registry.selectors import Registry, TierSpec, api_key_snapshot, memo_put, registry_get
from registry.services import api_key_hash, user_tier_resolve


@dataclass(frozen=True, slots=True)
class Principal:
    user: Any
    api_key_id: int | None
    tier_slug: str
    expires_at: float | None = None  # a Unix time; None = never


class ApiKeyRefused(ApplicationError):
    """401: an unknown, revoked or expired hub key (the message never echoes the key)."""

    status = 401
    code = "invalid_api_key"


def api_key_accept(principal: Principal | None) -> Principal:
    """The principal of a key that may be used now; notes the use (no I/O: see registry/key_usage.py)."""
    if principal is None:
        raise ApiKeyRefused("Invalid API key.")
    if principal.expires_at is not None and time.time() >= principal.expires_at:
        raise ApiKeyRefused("This API key has expired: create a new one.", code="api_key_expired")
    api_key_used(principal.api_key_id)
    return principal


def _made_since_limits_checked(api_key: ApiKey) -> bool:
    """Whether the key may be younger than this process's limits snapshot (at most this stale)."""
    stale = max(settings.LLMHUB["REGISTRY_CACHE_CHECK_SECONDS"], settings.LLMHUB["SNAPSHOT_MAX_STALE_SECONDS"])
    return api_key.created_at >= timezone.now() - timedelta(seconds=stale + 1)


def api_key_authenticate(*, raw_key: str) -> Principal | None:
    """The principal behind a raw hub key, expired or not, or None for an unknown, revoked or inactive one."""
    memo = api_key_snapshot.get()
    key_hash = api_key_hash(raw_key)
    principal = memo.get(key_hash)
    if principal is not None:
        return principal
    api_key = (
        ApiKey.objects.select_related("user")
        .filter(key_hash=key_hash, revoked_at__isnull=True, user__is_active=True)
        .first()
    )
    if api_key is None or not hmac.compare_digest(api_key.key_hash, key_hash):
        return None
    if _made_since_limits_checked(api_key) and api_key.pk not in limits_get().keys \
            and QuotaLimit.objects.filter(api_key_id=api_key.pk).exists():
        # A key made with limits a moment ago in another process: this process's limits may predate it (they are
        # checked once per interval), and its first requests must not pass unlimited.
        limits_snapshot.invalidate()
    expires_at = api_key.expires_at.timestamp() if api_key.expires_at is not None else None
    principal = Principal(user=api_key.user, api_key_id=api_key.pk, tier_slug=user_tier_resolve(user=api_key.user).slug,
                          expires_at=expires_at)
    memo_put(memo, key_hash, principal)
    return principal


async def aapi_key_authenticate(*, raw_key: str) -> Principal | None:
    memo = await api_key_snapshot.aget()
    principal = memo.get(api_key_hash(raw_key))
    if principal is not None:
        return principal
    return await db_read_in_thread(api_key_authenticate)(raw_key=raw_key)


def _tier_of(user: AbstractBaseUser, slug: str) -> TierSpec:
    # The memo and the registry are refreshed separately: for a moment after another process renames a tier,
    # one of them may not know the other's slug. Ask the database then rather than fail.
    tier = registry_get().tiers.get(slug)
    return tier if tier is not None else user_tier_resolve(user=user)


async def aprincipal_tier(principal: Principal, registry: Registry) -> TierSpec:
    """The async path's `_tier_of`: no thread hop unless the snapshot does not know the slug."""
    tier = registry.tiers.get(principal.tier_slug)
    if tier is not None:
        return tier
    return await db_read_in_thread(user_tier_resolve)(user=principal.user)


def user_tier_get(user: AbstractBaseUser) -> TierSpec:
    memo = api_key_snapshot.get()
    slug = memo.get(("tier", user.pk))
    if slug is None:
        slug = user_tier_resolve(user=user).slug
        memo_put(memo, ("tier", user.pk), slug)
    return _tier_of(user, slug)


def request_tier(request: Request) -> TierSpec:
    principal = getattr(request, "auth", None)
    if isinstance(principal, Principal):
        return _tier_of(principal.user, principal.tier_slug)
    return user_tier_get(request.user)


def bearer_token(header: bytes) -> str | None:
    """The token of an `Authorization: Bearer …` header; None when the header is another scheme."""
    parts = header.split()
    if not parts or parts[0].lower() != b"bearer":
        return None
    if len(parts) != 2:
        raise exceptions.AuthenticationFailed("Invalid Authorization header: expected 'Bearer <key>'.")
    try:
        return parts[1].decode("ascii")
    except UnicodeDecodeError:
        raise exceptions.AuthenticationFailed("Invalid API key.") from None


class ApiKeyAuthentication(BaseAuthentication):
    def authenticate(self, request: Request) -> tuple[Any, Principal] | None:
        raw_key = bearer_token(get_authorization_header(request))
        if raw_key is None:
            return None
        try:
            principal = api_key_accept(api_key_authenticate(raw_key=raw_key))
        except ApiKeyRefused as error:
            # /api keeps DRF's `authentication_failed` for a wrong key; an expired one says so.
            code = None if error.code == ApiKeyRefused.code else error.code
            raise exceptions.AuthenticationFailed(error.message, code=code) from None
        return principal.user, principal

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="llmhub"'

