"""The /keys/ page: a user's hub API keys (list, create, revoke), on the API's own input serializer and services.

A new key's secret is in the answer to the POST that created it, and nowhere else: not in the session, not in a
message, not in a redirect. That answer is marked `no-store`.
"""

import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, QueryDict
from django.shortcuts import redirect, render
from django.utils import timezone
from django.utils.timesince import timesince
from django.views.decorators.http import require_http_methods

from llmhub.errors import ApplicationError, NotFound
from registry.authentication import user_tier_get
from registry.limits import METRICS, PERIODS, LimitSpec, decimal_text, limits_get
from registry.models import ApiKey
from registry.selectors import api_key_own_get, api_key_state, api_keys_list, get_available_models, registry_get
from registry.serializers import ApiKeyInputSerializer
from registry.services import api_key_create_own, api_key_revoke

LIMIT_ROWS = 3
EXPIRY_CHOICES = (("", "Never"), ("1", "In 1 day"), ("7", "In 7 days"), ("30", "In 30 days"), ("90", "In 90 days"),
                  ("365", "In 1 year"))


def limit_text(spec: LimitSpec) -> str:
    scope = f" of {spec.model}" if spec.model else ""
    return f"{decimal_text(spec.limit)} {spec.metric}{scope} per {spec.period}"


def last_used_text(api_key: ApiKey) -> str:
    """"never", "just now" or "5 minutes ago" (the time is written at most once a minute)."""
    if api_key.last_used_at is None:
        return "never"
    if timezone.now() - api_key.last_used_at < timedelta(minutes=1):
        return "just now"
    return f"{timesince(api_key.last_used_at)} ago"


@dataclass(frozen=True, slots=True)
class KeyRow:
    api_key: ApiKey
    state: str
    last_used: str
    limits: tuple[str, ...]


def _rows(user) -> list[KeyRow]:
    return [KeyRow(api_key=api_key, state=api_key_state(api_key), last_used=last_used_text(api_key),
                   limits=tuple(limit_text(LimitSpec(row.metric, row.period, row.limit, row.model))
                                for row in api_key.limits.all()))
            for api_key in api_keys_list(user=user)]


@dataclass
class KeyForm:
    """The create form: what was typed (to show it again) and the errors, by field, as the API words them."""

    name: str = ""
    expires_in: str = ""
    limits: list[dict[str, str]] | None = None
    errors: dict[str, list[str]] | None = None

    @classmethod
    def from_post(cls, post: QueryDict) -> "KeyForm":
        limits = [{part: post.get(f"limits-{index}-{part}", "").strip() for part in ("metric", "period", "limit", "model")}
                  for index in range(LIMIT_ROWS)]
        # Rows with a value first: the API's "Limit 2" is then the second row shown again.
        limits.sort(key=lambda row: not row["limit"])
        return cls(name=post.get("name", ""), expires_in=post.get("expires_in", ""), limits=limits, errors={})

    @property
    def limits_open(self) -> bool:
        return any(row["limit"] for row in self.rows())

    def rows(self) -> list[dict[str, str]]:
        return self.limits or [{"metric": "", "period": "", "limit": "", "model": ""} for _ in range(LIMIT_ROWS)]

    def data(self) -> dict[str, Any]:
        """The API's input: rows without a value are left out; an expiry in days becomes a moment."""
        data: dict[str, Any] = {"name": self.name}
        if self.expires_in:
            if not self.expires_in.isdigit() or self.expires_in not in dict(EXPIRY_CHOICES):
                self.errors["expires_in"] = ["Choose one of the offered expiries."]
            else:
                data["expires_at"] = (timezone.now() + timedelta(days=int(self.expires_in))).isoformat()
        data["limits"] = [{name: value for name, value in row.items() if value or name != "model"}
                          for row in self.rows() if row["limit"]]
        return data

    def add(self, fields: dict[str, Any]) -> None:
        for name, found in fields.items():
            self.errors.setdefault(name, []).extend(_messages(found))


def _messages(found: Any, where: str = "") -> list[str]:
    """An error tree of the API (lists, dicts by field or list index) as readable lines."""
    if isinstance(found, dict):
        return [line for key, value in found.items()
                for line in _messages(value, f"{where}Limit {int(key) + 1}: " if str(key).isdigit() else f"{where}{key}: ")]
    if isinstance(found, list | tuple):
        return [line for item in found for line in _messages(item, where)]
    return [f"{where}{_API_PATH.sub(_row_label, str(found))}"]


_API_PATH = re.compile(r"^limits\[(\d+)\](?:\.(\w+))?: ")


def _row_label(match: re.Match) -> str:
    """The API's `limits[0].model: ` as the page's rows say it: `Limit 1 model: `."""
    field = f" {match[2]}" if match[2] else ""
    return f"Limit {int(match[1]) + 1}{field}: "


def _page(request: HttpRequest, form: KeyForm, *, created: tuple[ApiKey, str] | None = None,
          status: int = 200) -> HttpResponse:
    registry, tier = registry_get(), user_tier_get(request.user)
    owner_limits = limits_get().owner_limits(tier_slug=tier.slug, user_id=request.user.pk)
    context = {
        "tier": tier, "rows": _rows(request.user), "form": form, "created": created, "metrics": METRICS,
        "periods": PERIODS, "expiries": EXPIRY_CHOICES, "owner_limits": [limit_text(spec) for spec in owner_limits],
        "model_ids": [model.id for model in get_available_models(tier, registry=registry, owner_id=request.user.pk)],
    }
    response = render(request, "pages/keys.html", context, status=status)
    if created is not None:
        response["Cache-Control"] = "no-store"
    return response


@login_required
@require_http_methods(["GET", "POST"])
def keys_page(request: HttpRequest) -> HttpResponse:
    """GET: the user's keys and a form to create one. POST: create it (as POST /api/keys/ does) and show its secret
    this once."""
    if request.method == "GET":
        return _page(request, KeyForm())
    form = KeyForm.from_post(request.POST)
    serializer = ApiKeyInputSerializer(data=form.data(), context={"html_form": True})
    valid = serializer.is_valid()
    if form.errors or not valid:
        form.add({} if valid else serializer.errors)
        return _page(request, form, status=400)
    try:
        created = api_key_create_own(user=request.user, **serializer.validated_data)
    except ApplicationError as error:
        form.add(error.extra.get("fields") or {"non_field_errors": [error.message]})
        return _page(request, form, status=400)
    return _page(request, KeyForm(), created=created)


@login_required
@require_http_methods(["GET", "POST"])
def key_revoke(request: HttpRequest, key_id: int) -> HttpResponse:
    """GET asks for confirmation; POST revokes (another user's key is a 404)."""
    try:
        api_key = api_key_own_get(user=request.user, key_id=key_id)
    except NotFound:
        raise Http404("No such API key.") from None
    if request.method == "POST":
        api_key_revoke(api_key=api_key)
        messages.success(request, f"Revoked {api_key.name or 'the key'} ({api_key.prefix}…): it no longer works.")
        return redirect("pages:keys")
    return render(request, "pages/key_revoke.html", {"tier": user_tier_get(request.user), "api_key": api_key,
                                                     "state": api_key_state(api_key)})
