"""Server-rendered pages. Views only parse input, call services and selectors, and render.

Forms are validated by the API's own input serializers and saved by the same services (pages.forms), so a page
shows the API's field errors and refuses what the API refuses.
"""

from collections.abc import Callable
from typing import Any

import orjson
from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from rest_framework import serializers

from generation import services as generation
from generation.apis import GenerateInputSerializer
from generation.connectivity import endpoint_models
from health.model_tests import model_test_start
from health.models import ModelTest
from health.selectors import model_tests_recent
from health.status import model_status_of
from llmhub.api import error_body
from llmhub.errors import ApplicationError
from pages import playground
from pages.forms import SerializerForm, advised, user_model_initial
from pages.selectors import (
    MINE,
    defaults_down,
    detected_capabilities_changes,
    health_title,
    model_filters,
    model_groups,
    model_rows,
    model_test_ref,
    model_test_target,
    model_test_visible_get,
    own_model_rows,
    preference_badges,
    ref_of,
    statuses,
    stored_key_of,
    task_defaults_resolved,
)
from pages.templatetags.pages_tags import test_error
from registry.apis import caller_default_model
from registry.authentication import user_tier_get
from registry.selectors import (
    apreferences_get,
    get_default_model,
    preferences_get,
    registry_get,
    registry_snapshot,
    user_model_get,
)
from registry.serializers import PreferencesInputSerializer, UserModelInputSerializer, UserModelUpdateInputSerializer
from registry.services import (
    preferences_update,
    user_model_create,
    user_model_delete,
    user_model_input_problems,
    user_model_update,
)
from translation import services as translation
from translation.apis import TranslateInputSerializer

FINISHED = (ModelTest.State.SUCCEEDED, ModelTest.State.FAILED)
PREFERENCE_LABELS = {"default_model": "Default model", "task_defaults.generation": "Generation",
                     "task_defaults.translation": "Translation", "task_defaults.code": "Code"}
USER_MODEL_LABELS = {"id": "Model id", "display_name": "Display name", "model": "Upstream model name",
                     "base_url": "Base URL", "api_key": "API key", "enabled": "Enabled",
                     "context_window": "Context window (tokens)", "input_price_per_million": "Input price ($ per 1M tokens)",
                     "output_price_per_million": "Output price ($ per 1M tokens)",
                     "capabilities.streaming": "Streaming", "capabilities.json_mode": "JSON mode",
                     "capabilities.tools": "Tool calling", "capabilities.vision": "Vision"}


def _page(request: HttpRequest, template: str, context: dict | None = None, *, status: int = 200) -> HttpResponse:
    """Renders a page with what the header needs."""
    return render(request, template, {"tier": user_tier_get(request.user), **(context or {})}, status=status)


def _saved(form: SerializerForm, save: Callable[[dict[str, Any]], Any],
           problems: Callable[[dict[str, Any]], dict[str, list[str]]] | None = None) -> bool:
    """Validates the form, then saves through the service; a refusal lands in the form's errors. `problems`: what
    the service would also refuse, shown with the serializer's errors (every problem in one round trip)."""
    if not form.is_valid():
        if problems is not None:
            form.add_problems(problems(form.data))
        return False
    try:
        save(form.validated_data)
    except ApplicationError as error:
        form.add_error(error)
        return False
    return True


def _json_error(error: ApplicationError) -> JsonResponse:
    return JsonResponse(error_body(code=error.code, message=error.message, **error.extra), status=error.status)


@login_required
@require_GET
def home(request: HttpRequest) -> HttpResponse:
    return redirect("pages:models")


# --- Model picker, defaults and status ----------------------------------------------------------------------

@login_required
@require_http_methods(["GET", "POST"])
def models_picker(request: HttpRequest) -> HttpResponse:
    """Every model, the ones above the user's tier greyed out; POST saves the user's defaults (as PUT
    /api/preferences/ does, favourites aside)."""
    registry, tier = registry_get(), user_tier_get(request.user)
    down = []
    if request.method == "POST":
        form = SerializerForm(PreferencesInputSerializer, post=request.POST, exclude=("favourites",),
                              labels=PREFERENCE_LABELS)
        if form.is_valid() and "confirm_down" not in request.POST:  # a Down default is saved only when confirmed
            down = defaults_down(data=form.validated_data, registry=registry, tier=tier, owner_id=request.user.pk)
        if not down and _saved(form, lambda data: preferences_update(user=request.user, data=data)):
            messages.success(request, "Your defaults are saved.")
            return redirect("pages:models")
    else:
        preferences = preferences_get(request.user.pk)
        form = SerializerForm(PreferencesInputSerializer, exclude=("favourites",), labels=PREFERENCE_LABELS,
                              initial={"default_model": preferences.default_model,
                                       "task_defaults": dict(preferences.task_defaults)})
    default = caller_default_model(request, tier, registry)
    badges = preference_badges(preferences=preferences_get(request.user.pk), default=default, registry=registry,
                               tier=tier, owner_id=request.user.pk)
    rows = model_rows(registry=registry, tier=tier, owner_id=request.user.pk, badges=badges)
    tier_default = get_default_model(tier, registry=registry)
    context = {"groups": model_groups(rows), "form": form, "filters": model_filters(rows),
               "down": [(model, health_title(health)) for model, health in down],
               "tier_default_label": f"Tier default: {tier_default.display_name}" if tier_default else "None"}
    return _page(request, "pages/models.html", context, status=400 if form.errors else 200)


@login_required
@require_GET
def models_status(request: HttpRequest) -> JsonResponse:
    """Polled by the pages every few seconds: the status and hover text of every model they show."""
    return JsonResponse({"models": statuses(registry=registry_get(), tier=user_tier_get(request.user),
                                            owner=request.user)})


# --- The user's own models ----------------------------------------------------------------------------------

def _own_model_or_404(request: HttpRequest, model_id: str):
    model = user_model_get(owner_id=request.user.pk, model_id=model_id)
    if model is None:
        raise Http404("No such model.")
    return model


@login_required
@require_http_methods(["GET", "POST"])
def own_models(request: HttpRequest) -> HttpResponse:
    """The user's own models, and a form to add one (POST /api/models/ on a page). A model just added is tested at
    once; the page follows that test (`?tested=<id>`)."""
    if request.method == "POST":
        form = SerializerForm(UserModelInputSerializer, post=request.POST, labels=USER_MODEL_LABELS)
        added = []
        if _saved(form, lambda data: added.append(user_model_create(owner=request.user, **data)),
                  problems=lambda data: user_model_input_problems(owner=request.user, data=data)):
            messages.success(request, f"Added {form.validated_data['display_name']}.")
            return redirect(_tested_url(request, added[0]))
    else:
        form = SerializerForm(UserModelInputSerializer, labels=USER_MODEL_LABELS)
    tested = model_test_visible_get(test_id=int(request.GET["tested"]), user=request.user) \
        if request.GET.get("tested", "").isdigit() else None
    context = {"rows": own_model_rows(owner=request.user), "form": form, "key_retype": _key_dropped(request, form),
               "tested": _test_payload(tested, request) if tested is not None else None}
    return _page(request, "pages/own_models.html", context, status=400 if form.errors else 200)


def _tested_url(request: HttpRequest, model) -> str:
    """The list, following a connectivity test of the model just added (none when the queue is down)."""
    try:
        test = model_test_start(user_model=model, requested_by=request.user)
    except ApplicationError:
        return reverse("pages:own-models")
    return f"{reverse('pages:own-models')}?tested={test.pk}"


def _key_dropped(request: HttpRequest, form: SerializerForm) -> bool:
    """A refused form that carried a key: the key is never sent back, so the page says it must be typed again."""
    return bool(form.errors and request.method == "POST" and request.POST.get("api_key", "").strip())


@login_required
@require_http_methods(["GET", "POST"])
def own_model_edit(request: HttpRequest, model_id: str) -> HttpResponse:
    """PUT /api/models/<id>/ on a page: every field, the key kept unless a new one is typed."""
    model = _own_model_or_404(request, model_id)
    key_label = "Replace API key" if model.api_key_encrypted else "Set API key"
    options = {"exclude": ("id",), "labels": {**USER_MODEL_LABELS, "api_key": key_label},
               "context": {"model_id": model.slug}}
    if request.method == "POST":
        form = SerializerForm(UserModelUpdateInputSerializer, post=request.POST, **options)
        if _saved(form, lambda data: user_model_update(model=model, data=data),
                  problems=lambda data: user_model_input_problems(owner=request.user, data=data, model=model)):
            messages.success(request, f"Saved {model.display_name}.")
            return redirect("pages:own-models")
    else:
        form = SerializerForm(UserModelUpdateInputSerializer, initial=user_model_initial(model), **options)
    return _page(request, "pages/own_model_edit.html",
                 {"model": model, "form": form, "key_retype": _key_dropped(request, form)},
                 status=400 if form.errors else 200)


@login_required
@require_http_methods(["GET", "POST"])
def own_model_delete(request: HttpRequest, model_id: str) -> HttpResponse:
    """GET asks for confirmation; POST deletes (its usage history stays)."""
    model = _own_model_or_404(request, model_id)
    if request.method == "POST":
        user_model_delete(model=model)
        messages.success(request, f"Deleted {model.display_name}.")
        return redirect("pages:own-models")
    return _page(request, "pages/own_model_delete.html", {"model": model})


# --- Connectivity tests -------------------------------------------------------------------------------------

def _test_payload(test: ModelTest, request: HttpRequest) -> dict[str, Any]:
    context = {"test": test, "apply": detected_capabilities_changes(test)}
    return {"id": test.pk, "state": test.state, "finished": test.state in FINISHED,
            "url": reverse("pages:model-test", args=[test.pk]), "ref": model_test_ref(test),
            "html": render_to_string("pages/_test_result.html", context, request=request),
            "row": render_to_string("pages/_test_row.html", {"test": test})}


@login_required
@require_http_methods(["GET", "POST"])
def model_tests(request: HttpRequest, kind: str, model_id: str) -> HttpResponse:
    """GET: a model's recent tests and a button to start one. POST: start a test (202, JSON to poll)."""
    target = model_test_target(kind=kind, model_id=model_id, registry=registry_get(), user=request.user)
    if target is None:
        raise Http404("No such model.")
    field = "user_model" if kind == MINE else "llm_model"
    if request.method == "POST":
        try:
            test = model_test_start(**{field: target}, requested_by=request.user)
        except ApplicationError as error:  # the queue is down, or the model was deleted while it was tested
            return _json_error(error)
        return JsonResponse(_test_payload(test, request), status=202)
    health = model_status_of(target)
    context = {"target": target, "kind": kind, "model_id": model_id, "ref": ref_of(kind, model_id), "health": health,
               "status_title": health_title(health), "tests": model_tests_recent(**{f"{field}_id": target.pk})}
    return _page(request, "pages/model_tests.html", context)


@login_required
@require_GET
def model_test_detail(request: HttpRequest, test_id: int) -> JsonResponse:
    """Polled about once a second while a test runs."""
    test = model_test_visible_get(test_id=test_id, user=request.user)
    if test is None:
        raise Http404("No such test.")
    return JsonResponse(_test_payload(test, request))


@login_required
@require_POST
def endpoint_models_list(request: HttpRequest) -> JsonResponse:
    """The model ids an endpoint offers (`GET <base_url>/models`), for the own-model form's "Fetch models": with the
    key typed, else (editing, same base URL) the model's stored key."""
    base_url = request.POST.get("base_url", "").strip()
    problems = user_model_input_problems(owner=request.user, data={"base_url": base_url}) if base_url else {
        "base_url": ["Give the base URL first."]}
    if problems:
        message = advised("base_url", problems["base_url"][0])
        return JsonResponse(error_body(code="invalid", message=message, fields=problems), status=400)
    api_key = request.POST.get("api_key", "").strip()
    stored = user_model_get(owner_id=request.user.pk, model_id=request.POST.get("model_id", ""))
    if not api_key and stored is not None and stored.base_url.rstrip("/") == base_url.rstrip("/"):
        api_key = stored_key_of(stored)
    found = endpoint_models(base_url=base_url, api_key=api_key, owner_id=request.user.pk,
                            check_timeout=settings.LLMHUB["MODEL_TEST_CHECK_TIMEOUT_SECONDS"],
                            max_response_bytes=settings.LLMHUB["MODEL_TEST_MAX_RESPONSE_BYTES"])
    if found.error:
        return JsonResponse(error_body(code="endpoint_models_unavailable", message=test_error(found.error)),
                            status=502)
    return JsonResponse({"models": found.ids})


@login_required
@require_POST
def own_model_capabilities_apply(request: HttpRequest, model_id: str) -> HttpResponse:
    """Sets the own model's capabilities to what one of its finished tests detected."""
    model = _own_model_or_404(request, model_id)
    test = model_test_visible_get(test_id=int(request.POST.get("test", "0") or 0), user=request.user) \
        if request.POST.get("test", "").isdigit() else None
    changes = detected_capabilities_changes(test) if test is not None and test.user_model_id == model.pk else {}
    if changes:
        user_model_update(model=model, data={"capabilities": changes})
        shown = ", ".join(f"{name} {'on' if value else 'off'}" for name, value in changes.items())
        messages.success(request, f"{model.display_name}: capabilities set as tested ({shown}).")
    else:
        messages.info(request, f"{model.display_name}: nothing to change.")
    return redirect("pages:own-models")


# --- Playground ---------------------------------------------------------------------------------------------

@login_required
@require_GET
def playground_page(request: HttpRequest) -> HttpResponse:
    registry, tier = registry_get(), user_tier_get(request.user)
    rows = [row for row in model_rows(registry=registry, tier=tier, owner_id=request.user.pk) if row.allowed]
    defaults = task_defaults_resolved(preferences=preferences_get(request.user.pk), tier=tier, registry=registry,
                                      owner_id=request.user.pk, tasks=("generation", "translation"))
    return _page(request, "pages/playground.html", {"groups": model_groups(rows), "defaults": defaults,
                                                    "v1_url": request.build_absolute_uri("/v1")})


GENERATION_FIELDS = ("prompt", "messages", "model", "temperature", "max_tokens")
TRANSLATION_FIELDS = ("text", "target_language", "source_language", "model")


@login_required
@require_POST
async def playground_stream(request: HttpRequest) -> HttpResponse:
    """The answer to a chat (or a prompt), or a translation, as server-sent events (see pages.playground). The page
    posts JSON (a form post works too). A refusal or a failure before the first byte is the API's JSON error with
    its status, the attempts included; a page that stops reading ends the stream, logged as `partial`."""
    user = await request.auser()
    registry = await registry_snapshot.aget()
    caller = generation.Caller(user_id=user.pk, api_key_id=None, tier=await sync_to_async(user_tier_get)(user))
    preferences = await apreferences_get(user.pk)
    try:
        data, html_form = _playground_input(request)
        if data.get("task") == "translation":
            params = _validated(TranslateInputSerializer, data, TRANSLATION_FIELDS, html_form=html_form)
            result = await translation.translate(
                caller=caller, registry=registry, text=params["text"], target_language=params["target_language"],
                source_language=params.get("source_language"), model_id=params.get("model"),
                preferred_ids=preferences.preferred_order("translation"), endpoint="pages.playground")
            events = playground.translation_events(result)
        else:
            params = _validated(GenerateInputSerializer, data, GENERATION_FIELDS, html_form=html_form)
            stream = await generation.chat_stream(
                caller=caller, registry=registry, body=playground.chat_body(params), endpoint="pages.playground",
                model_id=params.get("model"), preferred_ids=preferences.preferred_order("generation"))
            events = playground.chat_events(stream)
    except serializers.ValidationError as error:
        return JsonResponse(error_body(code="invalid", message="Invalid input.", fields=error.detail), status=400)
    except ApplicationError as error:
        return _json_error(error)
    response = StreamingHttpResponse(events, content_type="text/event-stream; charset=utf-8")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


def _playground_input(request: HttpRequest) -> tuple[dict[str, Any], bool]:
    """The posted fields, and whether they came from a form (strings, coerced) rather than JSON (exact types)."""
    if request.content_type != "application/json":
        return request.POST.dict(), True
    try:
        data = orjson.loads(request.body)
    except orjson.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        raise serializers.ValidationError({"non_field_errors": ["Send a JSON object."]})
    return data, False


def _validated(serializer_class: type[serializers.Serializer], data: dict[str, Any], names: tuple[str, ...], *,
               html_form: bool) -> dict[str, Any]:
    """The API's own input serializer checks the playground's input: the same rules, the same messages. Empty
    inputs count as not given (the page has inputs for both tasks)."""
    given = {name: data[name] for name in names if data.get(name) not in (None, "", [])}
    serializer = serializer_class(data=given, context={"html_form": html_form})
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data
