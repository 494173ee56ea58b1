"""Server-rendered pages. Views only parse input, call services and selectors, and render."""

from asgiref.sync import sync_to_async
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.template.loader import render_to_string
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from rest_framework import serializers

from generation import services as generation
from generation.apis import GenerateInputSerializer
from llmhub.api import error_body
from llmhub.errors import ApplicationError
from pages import playground
from pages.selectors import (
    MINE,
    REGISTRY,
    model_groups,
    model_rows,
    own_models_list,
    statuses,
    test_target,
    test_target_ref,
    test_visible_get,
)
from registry.authentication import user_tier_get
from registry.model_tests import QueueUnavailable, model_test_start
from registry.models import ModelTest
from registry.selectors import apreferences_get, model_tests_recent, registry_get, registry_snapshot
from translation import services as translation
from translation.apis import TranslateInputSerializer

FINISHED = (ModelTest.State.SUCCEEDED, ModelTest.State.FAILED)


def _page(request: HttpRequest, template: str, context: dict | None = None, *, status: int = 200) -> HttpResponse:
    """Renders a page with what the header needs."""
    return render(request, template, {"tier": user_tier_get(request.user), **(context or {})}, status=status)


def _json_error(error: ApplicationError) -> JsonResponse:
    return JsonResponse(error_body(code=error.code, message=error.message, **error.extra), status=error.status)


def _invalid(error: serializers.ValidationError) -> JsonResponse:
    return JsonResponse(error_body(code="invalid", message="Invalid input.", fields=error.detail), status=400)


@login_required
@require_GET
def home(request: HttpRequest) -> HttpResponse:
    return redirect("pages:models")


# --- Model picker and status ------------------------------------------------------------------------------

@login_required
@require_GET
def models_picker(request: HttpRequest) -> HttpResponse:
    registry, tier = registry_get(), user_tier_get(request.user)
    rows = model_rows(registry=registry, tier=tier, owner_id=request.user.pk)
    return _page(request, "pages/models.html", {"groups": model_groups(rows)})


@login_required
@require_GET
def models_status(request: HttpRequest) -> JsonResponse:
    """Polled by the pages every few seconds: the status and hover text of every model they show."""
    return JsonResponse({"models": statuses(registry=registry_get(), tier=user_tier_get(request.user),
                                            owner=request.user)})


# --- Connectivity tests -------------------------------------------------------------------------------------

def _test_payload(test: ModelTest) -> dict:
    return {"id": test.pk, "state": test.state, "finished": test.state in FINISHED,
            "url": f"/models/tests/{test.pk}/", "ref": test_target_ref(test),
            "html": render_to_string("pages/_test_result.html", {"test": test})}


@login_required
@require_http_methods(["GET", "POST"])
def model_tests(request: HttpRequest, kind: str, model_id: str) -> HttpResponse:
    """GET: a model's recent tests, with a button to start one. POST: start a test (202, JSON)."""
    registry, tier = registry_get(), user_tier_get(request.user)
    target = test_target(kind=kind, model_id=model_id, registry=registry, tier=tier, owner=request.user)
    if target is None:
        raise Http404("No such model.")
    field = "user_model" if kind == MINE else "llm_model"
    if request.method == "POST":
        try:
            test = model_test_start(**{field: target}, requested_by=request.user)
        except QueueUnavailable as error:
            return _json_error(error)
        return JsonResponse(_test_payload(test), status=202)
    tests = model_tests_recent(**{f"{field}_id": target.pk})
    return _page(request, "pages/model_tests.html", {"target": target, "ref": f"{kind}/{model_id}", "tests": tests})


@login_required
@require_GET
def model_test_detail(request: HttpRequest, test_id: int) -> JsonResponse:
    """Polled about once a second while a test runs."""
    test = test_visible_get(test_id=test_id, registry=registry_get(), tier=user_tier_get(request.user),
                            owner=request.user)
    if test is None:
        raise Http404("No such test.")
    return JsonResponse(_test_payload(test))


# --- Playground ---------------------------------------------------------------------------------------------

@login_required
@require_GET
def playground_page(request: HttpRequest) -> HttpResponse:
    registry, tier = registry_get(), user_tier_get(request.user)
    rows = [row for row in model_rows(registry=registry, tier=tier, owner_id=request.user.pk) if row.allowed]
    return _page(request, "pages/playground.html", {"groups": model_groups(rows)})


@login_required
@require_POST
async def playground_stream(request: HttpRequest) -> HttpResponse:
    """The answer to a prompt or a translation as server-sent events (see pages.playground); a refusal or a
    failure before the first byte is a JSON error with its status, the attempts included."""
    user = await request.auser()
    registry = await registry_snapshot.aget()
    tier = await sync_to_async(user_tier_get)(user)
    caller = generation.Caller(user_id=user.pk, api_key_id=None, tier=tier)
    preferences = await apreferences_get(user.pk)
    data = {name: value for name, value in request.POST.items() if value and name != "csrfmiddlewaretoken"}
    task = data.pop("task", "generation")
    try:
        if task == "translation":
            params = _validated(TranslateInputSerializer, data, ("text", "target_language", "source_language", "model"))
            result = await translation.translate(
                caller=caller, registry=registry, text=params["text"], target_language=params["target_language"],
                source_language=params.get("source_language"), model_id=params.get("model"),
                preferred_id=preferences.preferred_for("translation"))
            events = playground.translation_events(result)
        else:
            params = _validated(GenerateInputSerializer, data, ("prompt", "model"))
            stream = await generation.chat_stream(
                caller=caller, registry=registry, body={"messages": [{"role": "user", "content": params["prompt"]}]},
                endpoint="pages.playground", model_id=params.get("model"),
                preferred_id=preferences.preferred_for("generation"))
            events = playground.chat_events(stream)
    except serializers.ValidationError as error:
        return _invalid(error)
    except ApplicationError as error:
        return _json_error(error)
    response = StreamingHttpResponse(events, content_type="text/event-stream; charset=utf-8")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


def _validated(serializer_class: type[serializers.Serializer], data: dict, names: tuple[str, ...]) -> dict:
    """The API's own input serializer checks the playground's form: the same rules, the same messages."""
    serializer = serializer_class(data={name: data[name] for name in names if name in data})
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data
