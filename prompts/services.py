"""Prompt templates at work: naming one in a request (`prompt_request_parse`), resolving it to a version
(`prompt_resolve`, the seam experiments hook into), rendering it for a model (`prompt_render`), and the writes
(`prompt_version_create`, `prompt_label_move`).

A request names a template as `name` (its `production` label, else its latest version), `name@label` or
`name@version`, in `metadata.prompt` (with `metadata.variables`, an object or a JSON object in a string: OpenAI's
metadata values are strings) or in the headers `x-llmhub-prompt` and `x-llmhub-prompt-variables` (JSON).
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from django.db import transaction

from llmhub.errors import ApplicationError, NotFound
from prompts.rendering import CompiledVersion, TemplateRefused, VariableError, compiled_render, variables_bind
from prompts.selectors import TemplateSpec, prompt_snapshot

DEFAULT_LABEL = "production"
HEADER = "x-llmhub-prompt"
VARIABLES_HEADER = "x-llmhub-prompt-variables"
# Keys of a request's `metadata` that are the hub's: taken out before the upstream sees the metadata.
METADATA_KEYS = ("prompt", "variables", "experiment")  # the hub's own: never sent upstream


class PromptInvalid(ApplicationError):
    status = 400
    code = "prompt_invalid"


@dataclass(frozen=True, slots=True)
class PromptRequest:
    """What a request asked for: a template, a label or version (None: the default), and variables."""

    name: str
    selector: str | None = None
    variables: Mapping[str, Any] = field(default_factory=dict)
    param: str = "metadata.prompt"  # where the client named it, for errors

    @property
    def variables_param(self) -> str:
        return VARIABLES_HEADER if self.param == HEADER else "metadata.variables"


@dataclass(frozen=True, slots=True)
class ResolvedPrompt:
    """One version of a template, chosen for a request (and for a model: its variant)."""

    name: str
    version: int
    compiled: CompiledVersion

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


@dataclass(frozen=True, slots=True)
class RenderedPrompt:
    name: str
    version: int
    system: str | None
    user: str | None
    params: Mapping[str, Any]

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


def _variables_parse(value: Any, *, param: str) -> dict[str, Any]:
    if value is None or value == "":
        return {}
    if isinstance(value, str | bytes):
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            raise PromptInvalid(f"'{param}' must be a JSON object.", extra={"param": param}) from None
    if not isinstance(value, dict):
        raise PromptInvalid(f"'{param}' must be an object of variable name → value.", extra={"param": param})
    return value


def prompt_request_parse(*, metadata: Any = None, header: str | bytes | None = None,
                         variables_header: str | bytes | None = None) -> PromptRequest | None:
    """The template a request names (metadata first, else the headers), or None. `metadata` is left as it is;
    `metadata_for_upstream` is what the upstream may see of it."""
    name, variables, param = None, None, "metadata.prompt"
    if isinstance(metadata, dict) and metadata.get("prompt") is not None:
        name, variables = metadata["prompt"], metadata.get("variables")
        variables = _variables_parse(variables, param="metadata.variables")
    elif header:
        name, param = header.decode("latin-1") if isinstance(header, bytes) else header, HEADER
        variables = _variables_parse(variables_header, param=VARIABLES_HEADER)
    if name is None:
        return None
    if not isinstance(name, str) or not name.strip() or len(name) > 160:
        raise PromptInvalid(f"'{param}' must be a template name, name@label or name@version.", extra={"param": param})
    name, _, selector = name.strip().partition("@")
    return PromptRequest(name=name, selector=selector or None, variables=variables or {}, param=param)


def metadata_for_upstream(body: dict[str, Any]) -> None:
    """Takes the hub's keys out of the body's metadata (and the metadata out, when nothing else is left)."""
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and any(key in metadata for key in METADATA_KEYS):
        rest = {key: value for key, value in metadata.items() if key not in METADATA_KEYS}
        if rest:
            body["metadata"] = rest
        else:
            del body["metadata"]


def _version_of(template: TemplateSpec, selector: str | None, *, param: str) -> int:
    if selector is None:
        return template.labels.get(DEFAULT_LABEL, template.latest)
    if selector.isdigit():
        if int(selector) not in template.versions:
            raise NotFound(f"The prompt '{template.name}' has no version {selector}.", code="prompt_version_not_found",
                           extra={"param": param})
        return int(selector)
    if selector not in template.labels:
        raise NotFound(f"The prompt '{template.name}' has no label '{selector}'.", code="prompt_label_not_found",
                       extra={"param": param})
    return template.labels[selector]


# The seam of experiments (and anything else that chooses a version per request): each resolver registered here
# is asked, in order, with (the version the request resolved to, the request, the model, the user id); the first
# that returns a ResolvedPrompt replaces it. Registered once at start-up (an AppConfig.ready()).
PromptResolver = Callable[[ResolvedPrompt, PromptRequest, Any, int | None], "ResolvedPrompt | None"]
_resolvers: list[PromptResolver] = []


def prompt_resolver_register(resolver: PromptResolver) -> None:
    if resolver not in _resolvers:
        _resolvers.append(resolver)


def prompt_resolver_unregister(resolver: PromptResolver) -> None:
    if resolver in _resolvers:
        _resolvers.remove(resolver)


def prompt_version_get(name: str, version: int | str | None = None) -> ResolvedPrompt:
    """A template's version (or `name[@label|@version]` selector) from the snapshot; 404 with a clear code when
    there is none. Sync (the snapshot may be rebuilt from the database): async callers use `aprompt_version_get`."""
    selector = str(version) if version is not None else None
    if version is None:
        name, _, selector = name.partition("@")
    return _resolved(prompt_snapshot.get(), name, selector or None, param="metadata.prompt")


def _resolved(templates: Mapping[str, TemplateSpec], name: str, selector: str | None, *, param: str) -> ResolvedPrompt:
    template = templates.get(name)
    if template is None:
        raise NotFound(f"There is no prompt template '{name}'.", code="prompt_not_found", extra={"param": param})
    version = _version_of(template, selector, param=param)
    return ResolvedPrompt(name=name, version=version, compiled=template.versions[version])


async def prompt_resolve(request: PromptRequest, *, model: Any = None, user_id: int | None = None) -> ResolvedPrompt:
    """The version `request` names (see `_version_of`), then whatever a registered resolver (an experiment's arm)
    substitutes for it, for this model and user. Query-free once the snapshot is warm."""
    resolved = _resolved(await prompt_snapshot.aget(), request.name, request.selector, param=request.param)
    for resolver in _resolvers:
        substitute = resolver(resolved, request, model, user_id)
        if substitute is not None:
            return substitute
    return resolved


def prompt_render(resolved: ResolvedPrompt, *, variables: Mapping[str, Any], model: Any = None,
                  supplied: Mapping[str, Any] | None = None, param: str = "metadata.variables") -> RenderedPrompt:
    """The version's texts for `model` (its variant, else its provider's, else the base) with the variables
    substituted; the same input always gives the same output. A missing, unknown or mistyped variable is a 400
    naming it (`param` says where the client gives variables)."""
    compiled = resolved.compiled
    try:
        texts = variables_bind(compiled, variables, supplied=supplied)
    except VariableError as error:
        raise PromptInvalid(str(error), code=error.code, extra={"param": f"{param}.{error.name}",
                                                                "variable": error.name}) from None
    part = compiled.part_for(model_id=getattr(model, "id", None), provider=getattr(model, "provider", None))
    return RenderedPrompt(name=resolved.name, version=resolved.version, system=compiled_render(part.system, texts),
                          user=compiled_render(part.user, texts), params=part.params)


# --- Writes ------------------------------------------------------------------------------------------------------

def prompt_version_create(*, name: str, system: str = "", user: str = "", variables: Any = None, params: Any = None,
                          variants: Any = None, note: str = "", description: str = "", label: str | None = None):
    """Adds the next version of template `name` (created when new); with `label`, points that label at it.
    Refuses (400, every problem listed) a template that is not safe to render."""
    from prompts.models import PromptTemplate, PromptVersion
    from prompts.rendering import version_compile

    try:
        version_compile(name=name, version=0, system=system, user=user, variables=variables, params=params,
                        variants=variants)
    except TemplateRefused as error:
        raise PromptInvalid("The template was refused: " + "; ".join(error.problems), code="prompt_template_refused",
                            extra={"problems": error.problems}) from None
    with transaction.atomic():
        template, _ = PromptTemplate.objects.get_or_create(name=name, defaults={"description": description})
        latest = template.versions.select_for_update().order_by("-version").values_list("version", flat=True).first()
        version = PromptVersion.objects.create(template=template, version=(latest or 0) + 1, system=system, user=user,
                                               variables=variables or {}, params=params or {},
                                               variants=variants or [], note=note)
        if label:
            prompt_label_move(name=name, label=label, version=version.version)
    return version


def prompt_label_move(*, name: str, label: str, version: int):
    """Points `label` of template `name` at `version` (created when new). Every process serves it from its next
    request on (the prompts' snapshot is immediate: llmhub.snapshot)."""
    from prompts.models import PromptLabel, PromptVersion

    target = PromptVersion.objects.filter(template__name=name, version=version).select_related("template").first()
    if target is None:
        raise NotFound(f"The prompt '{name}' has no version {version}.", code="prompt_version_not_found")
    moved, _ = PromptLabel.objects.update_or_create(template=target.template, name=label,
                                                    defaults={"version": target})
    return moved
