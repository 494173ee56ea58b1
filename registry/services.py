"""Writes to the model registry."""

import hashlib
import logging
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from django.apps import apps
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.db.models import Min
from django.utils import timezone

from llmhub.crypto import secret_decrypt, secret_encrypt, secret_last4, secret_rotate
from llmhub.errors import ApplicationError, ConfigurationError
from registry.limits import (
    LimitSpec,
    api_key_limits_problems,
    limits_build,
    limits_get,
    limits_parse,
    limits_snapshot,
    tier_limits_set,
)
from registry.loader import (
    DEFAULT_MODELS_FILE,
    FILE_SECTIONS,
    RegistryFile,
    RegistryFileInvalid,
    RegistryFileMissing,
    TierEntry,
    registry_file_from_legacy_env,
    registry_file_read,
)
from registry.models import (
    ApiKey,
    LLMModel,
    ModelFallback,
    Provider,
    QuotaLimit,
    Tier,
    UserLLMConfig,
    UserModelPreferences,
    UserProfile,
)
from registry.selectors import (
    CAPABILITIES,
    Registry,
    TierSpec,
    api_key_snapshot,
    api_keys_in_use,
    check_model_access,
    get_model_by_id,
    registry_get,
    registry_snapshot,
)
from registry.ssrf import UnsafeURL, validate_user_base_url

logger = logging.getLogger(__name__)

API_KEY_PREFIX = "lh-"


@dataclass
class SyncReport:
    """What a load changed: tiers, providers and models counted once each, whatever changed about them (fields,
    key, allowed tiers, fallbacks, defaults); `disabled` are the models that left the file."""

    created: int = 0
    updated: int = 0
    unchanged: int = 0
    disabled: int = 0
    source: str = ""
    warnings: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return f"created {self.created}, updated {self.updated}, unchanged {self.unchanged}, disabled {self.disabled}"


class _Changes:
    """Each entity's fate in one load: created, updated or unchanged (a later change upgrades unchanged)."""

    def __init__(self) -> None:
        self.states: dict[tuple[str, str], str] = {}

    def record(self, kind: str, key: str, state: str) -> None:
        current = self.states.get((kind, key))
        if current is None or (current == "unchanged" and state == "updated"):
            self.states[(kind, key)] = state

    def count(self, report: SyncReport) -> SyncReport:
        states = list(self.states.values())
        report.created, report.updated, report.unchanged = (states.count(s) for s in ("created", "updated", "unchanged"))
        return report


def _assign(instance: Any, values: dict[str, Any]) -> bool:
    changed = False
    for name, value in values.items():
        if getattr(instance, name) != value:
            setattr(instance, name, value)
            changed = True
    return changed


def secret_assign(instance: Provider | LLMModel | UserLLMConfig, plain: str) -> bool:
    """Stores `plain` as the instance's key; unchanged keys keep their ciphertext (loads stay idempotent)."""
    try:
        if secret_decrypt(instance.api_key_encrypted) == plain:
            return False
    except ConfigurationError:
        pass  # a key lost with its encryption key is replaced: that is how an operator recovers
    instance.api_key_encrypted = secret_encrypt(plain)
    instance.api_key_last4 = secret_last4(plain)
    return True


def _upsert(model_class: type, lookup: dict[str, Any], values: dict[str, Any], key: str | None,
            changes: _Changes, kind: str) -> Any:
    """`key` None keeps the stored key: a file that gives none never erases one entered in admin."""
    instance = model_class.objects.filter(**lookup).first()
    created = instance is None
    instance = instance or model_class(**lookup)
    changed = _assign(instance, values)
    if key is not None:
        changed = secret_assign(instance, key) or changed
    if created or changed:
        instance.save()
    changes.record(kind, next(iter(lookup.values())), "created" if created else "updated" if changed else "unchanged")
    return instance


def _key_kept(instance: Provider | LLMModel, *, path: str, reason: str, warnings: list[str]) -> None:
    if instance.api_key_encrypted:
        warnings.append(f"{path}: the file gives no key ({reason}); keeping the stored key")


def _redirect_refused_problem(path: str, **check: Any) -> str | None:
    """A stored key the file does not replace must not follow a new base URL (as in admin)."""
    try:
        secret_redirect_check(**check, new_key_given=False)
    except ConfigurationError as error:
        return f"{path}: {error.message}"
    return None


def _tier_ranks_clear(entries: list[TierEntry]) -> None:
    """Parks the tiers whose rank changes below every rank in use, so that ranks can be swapped or shifted in one
    load without meeting the unique constraint half-way."""
    stored = dict(Tier.objects.filter(slug__in=[entry.slug for entry in entries]).values_list("slug", "rank"))
    moving = [entry.slug for entry in entries if entry.slug in stored and stored[entry.slug] != entry.rank]
    if not moving:
        return
    floor = min(Tier.objects.aggregate(lowest=Min("rank"))["lowest"], *(entry.rank for entry in entries))
    for offset, slug in enumerate(moving, start=1):
        Tier.objects.filter(slug=slug).update(rank=floor - offset)


def _tiers_sync(spec: RegistryFile, changes: _Changes) -> dict[str, Tier]:
    _tier_ranks_clear(spec.tiers)
    tiers = {
        entry.slug: _upsert(Tier, {"slug": entry.slug},
                            {"name": entry.name, "rank": entry.rank, "description": entry.description,
                             "max_own_models": entry.max_own_models, "own_models_metered": entry.own_models_metered},
                            None, changes, "tier")
        for entry in spec.tiers
    }
    for entry in spec.tiers:
        if tier_limits_set(tier=tiers[entry.slug], limits=entry.limits):
            changes.record("tier", entry.slug, "updated")
    tiers.update({tier.slug: tier for tier in Tier.objects.exclude(slug__in=tiers)})
    return tiers


def _providers_sync(spec: RegistryFile, changes: _Changes, warnings: list[str], problems: list[str]) -> dict[str, Provider]:
    providers: dict[str, Provider] = {}
    for entry in spec.providers:
        path = f"provider_configs.{entry.slug}"
        stored = Provider.objects.filter(slug=entry.slug).first()
        if stored is not None and entry.api_key is None:
            problem = _redirect_refused_problem(f"{path}.base_url", instance=stored, base_url=entry.base_url)
            if problem:
                problems.append(problem)
                continue
            _key_kept(stored, path=f"{path}.api_key", reason=entry.no_key_reason, warnings=warnings)
        providers[entry.slug] = _upsert(Provider, {"slug": entry.slug}, {
            "display_name": entry.display_name, "base_url": entry.base_url,
            "timeout_seconds": entry.timeout_seconds, "connect_timeout_seconds": entry.connect_timeout_seconds,
            "extra_headers": entry.extra_headers,
        }, entry.api_key, changes, "provider")
    providers.update({p.slug: p for p in Provider.objects.exclude(slug__in=[e.slug for e in spec.providers])})
    return providers


def _models_sync(spec: RegistryFile, tiers: dict[str, Tier], providers: dict[str, Provider], changes: _Changes,
                 warnings: list[str], problems: list[str]) -> dict[str, LLMModel]:
    models: dict[str, LLMModel] = {}
    for index, entry in enumerate(spec.models):
        path = f"models[{index}]"
        provider = providers.get(entry.provider)
        if provider is None:
            continue  # its provider was refused above
        stored = LLMModel.objects.filter(public_id=entry.public_id).first()
        if stored is not None and entry.api_key is None:
            problem = _redirect_refused_problem(f"{path}.base_url", instance=stored, base_url=entry.base_url,
                                                provider=provider)
            if problem:
                problems.append(problem)
                continue
            _key_kept(stored, path=f"{path}.api_key", reason=entry.no_key_reason, warnings=warnings)
        model = _upsert(LLMModel, {"public_id": entry.public_id}, {
            "display_name": entry.display_name, "upstream_model": entry.upstream_model,
            "provider_id": provider.pk, "base_url": entry.base_url, "enabled": entry.enabled,
            "supports_streaming": entry.supports_streaming, "supports_json_mode": entry.supports_json_mode,
            "supports_tools": entry.supports_tools, "supports_vision": entry.supports_vision,
            "context_window": entry.context_window, "input_price_per_million": entry.input_price_per_million,
            "output_price_per_million": entry.output_price_per_million, "from_fixture": True,
            "kind": entry.kind, "request_params": entry.request_params, "api": entry.api,
            "fallbacks_auto": entry.fallbacks_auto,
        }, entry.api_key, changes, "model")
        wanted_tiers = {tiers[slug].pk for slug in entry.allowed_tiers}
        if set(model.allowed_tiers.values_list("pk", flat=True)) != wanted_tiers:
            model.allowed_tiers.set(wanted_tiers)
            changes.record("model", entry.public_id, "updated")
        models[entry.public_id] = model

    for entry in spec.models:
        model = models.get(entry.public_id)
        if model is None or any(fallback_id not in models for fallback_id in entry.fallbacks):
            continue
        wanted = [models[fallback_id].pk for fallback_id in entry.fallbacks]
        if list(model.fallback_links.values_list("fallback_id", flat=True)) != wanted:
            model_fallbacks_set(model=model, fallbacks=[models[fallback_id] for fallback_id in entry.fallbacks])
            changes.record("model", entry.public_id, "updated")
    return models


def _defaults_sync(spec: RegistryFile, models: dict[str, LLMModel], changes: _Changes) -> None:
    default = models.get(spec.default_model) if spec.default_model else None
    if default is not None and not default.is_default:
        for public_id in LLMModel.objects.filter(is_default=True).values_list("public_id", flat=True):
            changes.record("model", public_id, "updated")
        LLMModel.objects.filter(is_default=True).update(is_default=False)
        LLMModel.objects.filter(pk=default.pk).update(is_default=True)
        changes.record("model", default.public_id, "updated")
    for slug, model_id in spec.tier_defaults.items():
        if Tier.objects.filter(slug=slug).exclude(default_model=models[model_id]).update(default_model=models[model_id]):
            changes.record("tier", slug, "updated")


@transaction.atomic
def registry_sync(*, spec: RegistryFile) -> SyncReport:
    """Upserts a validated registry file, all or nothing. Models that left the file are disabled, never deleted.
    A key the file does not give (absent, or naming unset variables) leaves the stored key alone, with a warning;
    a file that would send such a stored key to a new base URL is refused."""
    changes, warnings, problems = _Changes(), list(spec.warnings), []
    tiers = _tiers_sync(spec, changes)
    providers = _providers_sync(spec, changes, warnings, problems)
    models = _models_sync(spec, tiers, providers, changes, warnings, problems)
    if problems:
        raise RegistryFileInvalid(problems)  # rolls the transaction back
    disabled = (
        LLMModel.objects.filter(from_fixture=True, enabled=True).exclude(public_id__in=models).update(enabled=False)
    )
    _defaults_sync(spec, models, changes)
    for name, parsed in spec.sections.items():  # other apps' sections (prompts), in the same transaction
        for kind, key, state in FILE_SECTIONS[name].sync(parsed, problems):
            changes.record(kind, key, state)
    if problems:
        raise RegistryFileInvalid(problems)
    # Bulk updates above send no signals.
    registry_snapshot.invalidate()
    return changes.count(SyncReport(disabled=disabled, warnings=warnings))


def model_fallbacks_set(*, model: LLMModel, fallbacks: list[LLMModel]) -> None:
    ModelFallback.objects.filter(model=model).delete()
    ModelFallback.objects.bulk_create(
        ModelFallback(model=model, fallback=fallback, position=position) for position, fallback in enumerate(fallbacks)
    )


def registry_load(*, path: Path | None, default_path: Path = DEFAULT_MODELS_FILE) -> SyncReport:
    """Loads the registry file at `path`. A path that was named and does not exist is an error that changes
    nothing. With none named, `default_path`; only when that is absent too, the legacy OPENAI_* variables give one
    model (and a warning says so)."""
    if path is not None and not path.exists():
        raise RegistryFileMissing(path)
    # As they stand (limits included): the legacy path re-syncs the known tiers and must not lose what admin set.
    limits = limits_build()
    known_tiers = [TierEntry(t.slug, t.name, t.rank, t.description, list(limits.tier(t.slug).limits), t.max_own_models,
                             t.own_models_metered) for t in Tier.objects.all()]
    source = path or default_path
    if source.exists():
        report = registry_sync(spec=registry_file_read(source, known_tiers=known_tiers))
        report.source = str(source)
        return report
    warning = (f"No registry file was named and there is none at {default_path}: configured one model for every "
               "tier from the legacy OPENAI_* variables (OPENAI_API_KEY, OPENAI_BASE_URL, LLM_MODEL).")
    logger.warning(warning)
    spec = registry_file_from_legacy_env(known_tiers=known_tiers)
    spec.warnings.insert(0, warning)
    report = registry_sync(spec=spec)
    report.source = "the legacy OPENAI_* variables"
    return report


def user_tier_resolve(*, user: AbstractBaseUser) -> TierSpec:
    """The user's tier; a user without one joins the lowest tier."""
    registry = registry_get()
    slug = UserProfile.objects.filter(user=user).values_list("tier__slug", flat=True).first()
    if slug is not None and slug in registry.tiers:
        return registry.tiers[slug]
    lowest = registry.lowest_tier
    if lowest is None:
        raise ConfigurationError("No tiers are configured: run `manage.py load_models`.", status=503,
                                 code="registry_empty")
    if slug is None:
        # bulk_create sends no post_save: recording the tier the user already had changes no memoised answer,
        # and an invalidation would drop the memo our caller is about to fill. A profile another request
        # created meanwhile wins.
        UserProfile.objects.bulk_create(
            [UserProfile(user=user, tier_id=Tier.objects.get(slug=lowest.slug).pk)], ignore_conflicts=True
        )
    # else: the profile names a tier this process's snapshot does not know yet; never overwrite it.
    return lowest


def user_tier_set(*, user: AbstractBaseUser, tier_slug: str) -> UserProfile:
    profile, _ = UserProfile.objects.update_or_create(user=user, defaults={"tier": Tier.objects.get(slug=tier_slug)})
    return profile


def api_key_hash(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode()).hexdigest()


def api_key_create(*, user: AbstractBaseUser, name: str = "", expires_at: datetime | None = None,
                   limits: Iterable[LimitSpec] = ()) -> tuple[ApiKey, str]:
    """Returns the stored key and the raw key, which exists only in this return value. `limits` are the key's own
    (checked by the caller: `api_key_create_own` for users, admin's form for staff)."""
    raw_key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    limits = list(limits)
    with transaction.atomic():
        api_key = ApiKey.objects.create(user=user, name=name, prefix=raw_key[:10], key_hash=api_key_hash(raw_key),
                                        expires_at=expires_at)
        QuotaLimit.objects.bulk_create(QuotaLimit(api_key=api_key, metric=spec.metric, period=spec.period,
                                                  limit=spec.limit, model=spec.model) for spec in limits)
    if limits:
        limits_snapshot.invalidate()  # bulk_create sends no signal
    return api_key, raw_key


def api_key_create_own(*, user: AbstractBaseUser, name: str = "", expires_at: datetime | None = None,
                       limits: Iterable[Mapping[str, Any]] = ()) -> tuple[ApiKey, str]:
    """A key a user makes for themselves (/keys/, POST /api/keys/): an expiry in the future, limits of the tier
    limits' shape and never above the user's own (each refused limit named by its place in `limits`), and at most
    `MAX_API_KEYS_PER_USER` keys in use (neither revoked nor expired)."""
    if expires_at is not None and expires_at <= timezone.now():
        raise field_error("expires_at", "The expiry must be in the future.", code="invalid")
    specs = _own_key_limits(user=user, items=list(limits))
    with transaction.atomic():
        # The user's row is locked first, so two concurrent creations cannot both take the last place.
        get_user_model().objects.select_for_update().filter(pk=user.pk).first()
        cap = settings.LLMHUB["MAX_API_KEYS_PER_USER"]
        if api_keys_in_use(user=user).count() >= cap:
            raise ApplicationError(f"You have {cap} API keys in use, the most allowed: revoke one to create another.",
                                   code="max_api_keys_reached", extra={"max_api_keys": cap})
        return api_key_create(user=user, name=name, expires_at=expires_at, limits=specs)


def _own_key_limits(*, user: AbstractBaseUser, items: list[Mapping[str, Any]]) -> list[LimitSpec]:
    registry = registry_get()
    known = [*registry.models, *registry.own_models(user.pk)]
    specs, problems = limits_parse(items, where="limits", model_ids=known)
    if problems:
        raise ApplicationError("Invalid limits: " + " ".join(problems), code="invalid", extra={"fields": {
            "limits": problems}})
    owner = limits_get().owner_limits(tier_slug=user_tier_resolve(user=user).slug, user_id=user.pk)
    above = [f"limits[{index}]: {problem}" for index, spec in enumerate(specs)
             for problem in api_key_limits_problems(owner_limits=owner, key_limits=[spec])]
    if above:
        raise ApplicationError("A key's limits cannot be above yours: " + " ".join(above), code="limit_above_owner",
                               extra={"fields": {"limits": above}})
    return specs


def api_key_revoke(*, api_key: ApiKey) -> ApiKey:
    """Revokes the key (again: nothing changes); every app process refuses it within
    `REGISTRY_CACHE_CHECK_SECONDS`."""
    ApiKey.objects.filter(pk=api_key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
    api_key_snapshot.invalidate()
    api_key.refresh_from_db(fields=["revoked_at"])
    return api_key


def secret_rotate_all() -> int:
    """Re-encrypts every stored key under the newest encryption key, all or nothing; returns the rows rewritten."""
    rewritten = 0
    with transaction.atomic():
        for model_class, field in _encrypted_fields():
            for instance in model_class.objects.select_for_update().exclude(**{field: ""}):
                try:
                    setattr(instance, field, secret_rotate(getattr(instance, field)))
                except ConfigurationError as error:
                    raise ConfigurationError(
                        f"{error.message} ({model_class._meta.verbose_name} #{instance.pk}: enter its key again, "
                        "or add the old encryption key to LLMHUB_ENCRYPTION_KEYS.) Nothing was rotated.",
                        code=error.code, status=error.status,
                    ) from None
                instance.save(update_fields=[field])
                rewritten += 1
    return rewritten


def _encrypted_fields() -> list[tuple[type, str]]:
    """The registry's keys, and the fields other apps' models list in `encrypted_fields` (webhook secrets), found
    through the app registry so that imports keep running one way."""
    fields = [(model_class, "api_key_encrypted") for model_class in (Provider, LLMModel, UserLLMConfig)]
    return fields + [(model_class, field) for model_class in apps.get_models()
                     for field in getattr(model_class, "encrypted_fields", ())]


def llm_models_set_enabled(*, model_ids: list[int], enabled: bool) -> int:
    changed = LLMModel.objects.filter(pk__in=model_ids).exclude(enabled=enabled).update(enabled=enabled)
    registry_snapshot.invalidate()
    return changed


def _endpoint(url: str) -> str:
    return url.strip().rstrip("/")


def _redirect_refused(message: str, *, field: str) -> ConfigurationError:
    return ConfigurationError(message, code="key_required_for_new_base_url", extra={"field": field})


def secret_redirect_check(*, instance: Provider | LLMModel, base_url: str, provider: Provider | None = None,
                          new_key_given: bool, key_cleared: bool = False) -> None:
    """A stored key is only sent to the URL it was entered with: an edit that would send one elsewhere (a new base
    URL, or a model moved to another provider) is refused unless the key is entered again with it.

    `base_url` and `provider` are the edited values; `instance` is only used for its primary key.
    """
    if instance.pk is None:
        return
    if isinstance(instance, Provider):
        stored = Provider.objects.get(pk=instance.pk)
        if _endpoint(base_url) == _endpoint(stored.base_url):
            return
        if stored.api_key_encrypted and not (key_cleared or new_key_given):
            raise _redirect_refused("Changing the base URL requires entering the API key again.", field="api_key")
        # Models with a key of their own and no base URL send that key to the provider's URL.
        carried = sorted(stored.models.filter(base_url="").exclude(api_key_encrypted="").values_list("public_id", flat=True))
        if carried:
            raise _redirect_refused(
                f"These models would send their own API keys to the new URL: {', '.join(carried)}. "
                "Give them their own base URL, or enter their keys again, first.", field="base_url",
            )
        return
    if new_key_given:
        return
    stored = LLMModel.objects.select_related("provider").get(pk=instance.pk)
    provider = provider or stored.provider
    old, new = _endpoint(stored.base_url or stored.provider.base_url), _endpoint(base_url or provider.base_url)
    if old == new:
        return
    if stored.api_key_encrypted and not key_cleared:
        raise _redirect_refused("Changing the endpoint requires entering the API key again.", field="api_key")
    if provider.api_key_encrypted and new != _endpoint(provider.base_url):
        raise _redirect_refused(
            f"This model would send the {provider.display_name} provider's API key to another URL: "
            "enter a key for the model.", field="api_key",
        )


# --- Users' own models ----------------------------------------------------------------------------------

def field_error(field: str, message: str, *, code: str, status: int = 400) -> ApplicationError:
    """An error about one input field (a 400 unless said otherwise), in the same `fields` shape as a serializer's
    errors."""
    return ApplicationError(message, code=code, status=status, extra={"fields": {field: [message]}})


def _safe_base_url(url: str) -> str:
    try:
        return validate_user_base_url(url)
    except UnsafeURL as error:
        raise field_error("base_url", error.message, code=error.code) from None


def _key_checked(api_key: str) -> str:
    """A key, or "" for an endpoint that takes none (a local server): calls then send no real key."""
    return (api_key or "").strip()


def _capability_fields(capabilities: Mapping[str, bool]) -> dict[str, bool]:
    unknown = set(capabilities) - set(CAPABILITIES)
    if unknown:
        raise field_error("capabilities", f"Unknown capabilities: {', '.join(sorted(unknown))}.", code="invalid")
    return {f"supports_{name}": bool(value) for name, value in capabilities.items()}


def _registry_id_taken(slug: str) -> str:
    return f"'{slug}' is the id of a registry model: choose another."


def _own_id_taken(slug: str) -> str:
    return f"You already have a model '{slug}'."


def user_model_input_problems(*, owner: AbstractBaseUser, data: Mapping[str, Any],
                              model: UserLLMConfig | None = None) -> dict[str, list[str]]:
    """What `user_model_create` (or, with `model`, `user_model_update`) would refuse in raw input, field by field,
    found without saving: a form shows these beside its serializer's errors, every problem in one round trip."""
    problems: dict[str, list[str]] = {}
    base_url = data.get("base_url")
    if isinstance(base_url, str) and base_url:
        try:
            validate_user_base_url(base_url)
        except UnsafeURL as error:
            problems["base_url"] = [error.message]
    slug = data.get("id")
    if model is None and isinstance(slug, str) and slug:
        if LLMModel.objects.filter(public_id=slug).exists():
            problems["id"] = [_registry_id_taken(slug)]
        elif UserLLMConfig.objects.filter(owner=owner, slug=slug).exists():
            problems["id"] = [_own_id_taken(slug)]
    return problems


def user_model_create(*, owner: AbstractBaseUser, slug: str, display_name: str, upstream_model: str, base_url: str,
                      api_key: str = "", enabled: bool = True, capabilities: Mapping[str, bool] | None = None,
                      context_window: int = 8192, input_price_per_million: Decimal = Decimal(0),
                      output_price_per_million: Decimal = Decimal(0)) -> UserLLMConfig:
    """Adds a model of the owner's own: their endpoint, which our servers must be allowed to fetch (registry/ssrf.py),
    and their key, stored encrypted. Its id may be neither one of their other models' nor a registry model's."""
    if LLMModel.objects.filter(public_id=slug).exists():
        raise field_error("id", _registry_id_taken(slug), code="name_taken", status=409)
    model = UserLLMConfig(
        owner=owner, slug=slug, display_name=display_name, upstream_model=upstream_model,
        base_url=_safe_base_url(base_url), enabled=enabled, context_window=context_window,
        input_price_per_million=input_price_per_million, output_price_per_million=output_price_per_million,
        **_capability_fields(capabilities or {}),
    )
    secret_assign(model, _key_checked(api_key))
    try:
        with transaction.atomic():
            _own_models_cap_check(owner=owner)
            model.save()
    except IntegrityError:
        raise field_error("id", _own_id_taken(slug), code="name_taken", status=409) from None
    return model


def _own_models_cap_check(*, owner: AbstractBaseUser) -> None:
    """The owner's tier caps how many models of their own they may add (`max_own_models`). Their profile row is
    locked first, so two concurrent adds cannot both take the last place."""
    UserProfile.objects.select_for_update().filter(user=owner).first()
    cap = limits_get().tier(user_tier_resolve(user=owner).slug).max_own_models
    if cap is not None and UserLLMConfig.objects.filter(owner=owner).count() >= cap:
        raise ApplicationError(f"Your tier allows at most {cap} models of your own: delete one to add another.",
                               status=403, code="max_own_models_reached", extra={"max_own_models": cap})


USER_MODEL_UPDATABLE = frozenset({"display_name", "upstream_model", "base_url", "api_key", "enabled", "capabilities",
                                  "context_window", "input_price_per_million", "output_price_per_million"})


def user_model_update(*, model: UserLLMConfig, data: Mapping[str, Any]) -> UserLLMConfig:
    """Changes the fields given in `data` (any of USER_MODEL_UPDATABLE; an `api_key` replaces the stored one).

    The stored key is only ever sent to the base URL it was entered with: a new base URL is refused unless the
    key is entered again with it.
    """
    fields = dict(data)
    if unknown := set(fields) - USER_MODEL_UPDATABLE:
        raise TypeError(f"user_model_update() cannot change {', '.join(sorted(unknown))}")
    api_key = fields.pop("api_key", None)
    if api_key is not None:
        api_key = _key_checked(api_key)
    fields.update(_capability_fields(fields.pop("capabilities", None) or {}))
    if "base_url" in fields:
        fields["base_url"] = _safe_base_url(fields["base_url"])
        # Compared with the stored row, not the instance: a caller may have edited that already.
        stored = UserLLMConfig.objects.filter(pk=model.pk).values_list("base_url", flat=True).get()
        if _endpoint(fields["base_url"]) != _endpoint(stored) and api_key is None:
            raise field_error("api_key", "Changing the base URL requires entering the API key again.",
                              code="key_required_for_new_base_url")
    changed = _assign(model, fields)
    if api_key is not None:
        changed = secret_assign(model, api_key) or changed
    if changed:
        model.save()
    return model


@transaction.atomic
def user_model_delete(*, model: UserLLMConfig) -> None:
    """Removes an owner's model and its tests. Its usage rows stay (they name models by id); the owner's
    preferences forget it."""
    preferences = UserModelPreferences.objects.select_for_update().filter(user_id=model.owner_id).first()
    if preferences is not None and _preferences_forget(preferences, model.slug):
        preferences.save()
    model.delete()


def _preferences_forget(preferences: UserModelPreferences, model_id: str) -> bool:
    before = (preferences.default_model, dict(preferences.task_defaults), list(preferences.favourites))
    if preferences.default_model == model_id:
        preferences.default_model = ""
    preferences.task_defaults = {task: value for task, value in preferences.task_defaults.items() if value != model_id}
    preferences.favourites = [value for value in preferences.favourites if value != model_id]
    return before != (preferences.default_model, preferences.task_defaults, preferences.favourites)


# --- Preferences ----------------------------------------------------------------------------------------

def _unusable(model_id: str, *, tier: TierSpec, registry: Registry, owner_id: int) -> ApplicationError | None:
    """Why the user may not use `model_id` (the error a request naming it would get: 404 or 403), or None."""
    try:
        check_model_access(tier, get_model_by_id(model_id, registry=registry, owner_id=owner_id))
    except ApplicationError as error:
        return error
    return None


def preferences_update(*, user: AbstractBaseUser, data: Mapping[str, Any]) -> UserModelPreferences:
    """Sets the preferences given in `data`: `default_model` (a model id, "" for none), `task_defaults` (task type →
    model id; replaces the stored ones) and `favourites` (model ids). Every id must name a model the user may use
    now (one of their own, or a registry model their tier allows); otherwise nothing is saved, and the answer is
    what a request naming the model would get: 404 when one does not exist, else 403."""
    tier, registry = user_tier_resolve(user=user), registry_get()
    task_defaults = {task: model_id for task, model_id in (data.get("task_defaults") or {}).items() if model_id}
    if unknown := set(task_defaults) - set(UserModelPreferences.TASK_TYPES):
        raise field_error("task_defaults", f"Unknown task types: {', '.join(sorted(unknown))}.", code="invalid")
    favourites = list(dict.fromkeys(data.get("favourites") or ()))
    errors: dict[str, Any] = {}
    refusals: list[ApplicationError] = []

    def check(model_id: str) -> list[str] | None:
        refusal = _unusable(model_id, tier=tier, registry=registry, owner_id=user.pk)
        if refusal is None:
            return None
        refusals.append(refusal)
        return [refusal.message]

    if data.get("default_model") and (reason := check(data["default_model"])):
        errors["default_model"] = reason
    if task_errors := {task: reason for task, model_id in task_defaults.items() if (reason := check(model_id))}:
        errors["task_defaults"] = task_errors
    if favourite_errors := {str(index): reason for index, model_id in enumerate(favourites) if (reason := check(model_id))}:
        errors["favourites"] = favourite_errors
    if errors:
        worst = max(refusals, key=lambda refusal: refusal.status)  # 404 (does not exist) before 403 (tier)
        raise ApplicationError("Some preferences name models you may not use.", code=worst.code, status=worst.status,
                               extra={"fields": errors})

    values = {"default_model": data.get("default_model") or "", "task_defaults": task_defaults, "favourites": favourites}
    with transaction.atomic():
        preferences, _ = UserModelPreferences.objects.select_for_update().get_or_create(user=user)
        if _assign(preferences, {name: value for name, value in values.items() if name in data}):
            preferences.save()
    return preferences
