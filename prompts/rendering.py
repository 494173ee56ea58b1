"""Prompt templates' own small language: `{{ name }}` substitutes a declared variable, and nothing else exists.

No Django template engine (its tags and attribute lookups reach code and data) and no `eval`: a template is
compiled once into literal text and variable slots, and rendering joins them. A template that tries anything else
(`{{ a.b }}`, `{{ x|filter }}`, `{{ f() }}`, `{% tag %}`, `{# #}`, an undeclared name such as `{{ request }}`) is
refused when it is saved, with every problem named; it therefore never renders. Values are substituted once, never
read again as template text, and never escaped. Pure functions, no I/O.
"""

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

VARIABLE_TYPES = ("str", "int", "float", "bool", "enum")
PARAM_NAMES = ("temperature", "max_tokens")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
# Anything that opens template syntax: `{{`, `{%`, `{#`.
_OPENING = re.compile(r"\{[{%#]")
_SLOT = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")


class TemplateRefused(ValueError):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class VariableError(ValueError):
    """A request's variables do not fit the version: `code` and the variable's `name` say which and why."""

    def __init__(self, message: str, *, code: str, name: str) -> None:
        super().__init__(message)
        self.code, self.name = code, name


@dataclass(frozen=True, slots=True)
class Variable:
    name: str
    type: str = "str"
    default: Any = None  # None: required
    values: tuple[str, ...] = ()  # enum


# A compiled text: literal strings and variable names (as 1-tuples), in order.
Compiled = tuple[str | tuple[str], ...]


def text_compile(text: str, *, declared: Mapping[str, Variable], where: str) -> tuple[Compiled, list[str]]:
    """The compiled text and its problems ([] when it is safe)."""
    parts: list[str | tuple[str]] = []
    problems: list[str] = []
    position = 0
    while (opening := _OPENING.search(text, position)) is not None:
        parts.append(text[position:opening.start()])
        slot = _SLOT.match(text, opening.start())
        if opening.group() != "{{":
            kind = "tags ({% %})" if opening.group() == "{%" else "comments ({# #})"
            problems.append(f"{where}: template {kind} are not allowed, only {{{{ variable }}}} (at character "
                            f"{opening.start()})")
            position = opening.end()
            continue
        if slot is None:
            problems.append(f"{where}: '{{{{' at character {opening.start()} is not closed by '}}}}' around one "
                            "variable name")
            position = opening.end()
            continue
        name = slot.group(1)
        if not _NAME.fullmatch(name):
            problems.append(f"{where}: '{slot.group()}' is not allowed: only a declared variable's name, with no "
                            "attribute, index, call or filter")
        elif name not in declared:
            problems.append(f"{where}: '{slot.group()}' names '{name}', which is not a declared variable")
        else:
            parts.append((name,))
        position = slot.end()
    parts.append(text[position:])
    return tuple(part for part in parts if part != ""), problems


def variables_parse(value: Any, *, where: str) -> tuple[dict[str, Variable], list[str]]:
    """Declared variables: `{"name": {"type": "str", "default": "x"}, "tone": {"type": "enum", "values": [...]}}`."""
    if value in (None, {}):
        return {}, []
    if not isinstance(value, Mapping):
        return {}, [f"{where}: must be an object of variable name → declaration"]
    variables, problems = {}, []
    for name, spec in value.items():
        at = f"{where}.{name}"
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            problems.append(f"{at}: a variable's name is letters, digits and _ (not starting with a digit)")
            continue
        if not isinstance(spec, Mapping):
            problems.append(f"{at}: must be an object with a 'type'")
            continue
        if unknown := sorted(set(spec) - {"type", "default", "values", "description"}):
            problems.append(f'{at}: unknown key "{unknown[0]}" (expected type, default, values, description)')
        kind = spec.get("type", "str")
        if kind not in VARIABLE_TYPES:
            problems.append(f"{at}.type: must be one of {', '.join(VARIABLE_TYPES)}")
            continue
        values = spec.get("values", [])
        if kind == "enum" and (not isinstance(values, list) or not values
                               or not all(isinstance(item, str) for item in values)):
            problems.append(f"{at}.values: an enum needs a non-empty list of strings")
            continue
        variable = Variable(name, kind, None, tuple(values) if kind == "enum" else ())
        default = spec.get("default")
        if default is not None:
            try:
                default = value_coerce(variable, default)
            except VariableError as error:
                problems.append(f"{at}.default: {error}")
                continue
        variables[name] = Variable(name, kind, default, variable.values)
    return variables, problems


def value_coerce(variable: Variable, value: Any) -> Any:
    """The value as the variable's type takes it (strictly: JSON's own types, no parsing of strings)."""
    kind, ok = variable.type, False
    if kind in ("str", "enum"):
        ok = isinstance(value, str) and (kind == "str" or value in variable.values)
    elif kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "float":
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        value = float(value) if ok else value
    elif kind == "bool":
        ok = isinstance(value, bool)
    if not ok:
        expected = f"one of {', '.join(map(repr, variable.values))}" if kind == "enum" else f"a {kind}"
        raise VariableError(f"'{variable.name}' must be {expected}.", code="prompt_variable_invalid",
                            name=variable.name)
    return value


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else repr(value)


def params_problems(value: Any, *, where: str) -> list[str]:
    if value in (None, {}):
        return []
    if not isinstance(value, Mapping):
        return [f"{where}: must be an object"]
    problems = [f'{where}: unknown parameter "{name}" (expected {", ".join(PARAM_NAMES)})'
                for name in sorted(set(value) - set(PARAM_NAMES))]
    temperature = value.get("temperature")
    if temperature is not None and (isinstance(temperature, bool) or not isinstance(temperature, int | float)
                                    or not 0 <= temperature <= 2):
        problems.append(f"{where}.temperature: must be a number from 0 to 2")
    max_tokens = value.get("max_tokens")
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        problems.append(f"{where}.max_tokens: must be a positive integer")
    return problems


@dataclass(frozen=True, slots=True)
class Part:
    """A version's system and user texts (compiled) and default parameters, or one variant's."""

    system: Compiled | None
    user: Compiled | None
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CompiledVersion:
    name: str
    version: int
    variables: Mapping[str, Variable]
    base: Part
    by_model: Mapping[str, Part] = field(default_factory=dict)
    by_provider: Mapping[str, Part] = field(default_factory=dict)

    def part_for(self, *, model_id: str | None, provider: str | None) -> Part:
        """The model's variant, else its provider's, else the base texts."""
        return self.by_model.get(model_id) or self.by_provider.get(provider) or self.base


def version_compile(*, name: str, version: int, system: str | None, user: str | None, variables: Any = None,
                    params: Any = None, variants: Any = None, where: str = "") -> CompiledVersion:
    """Compiles a version; raises TemplateRefused listing every problem (paths start with `where`)."""
    prefix = f"{where}." if where else ""
    declared, problems = variables_parse(variables, where=f"{prefix}variables")

    def part(system: Any, user: Any, params: Any, at: str) -> Part:
        texts = []
        for label, text in (("system", system), ("user", user)):
            if text is None or text == "":
                texts.append(None)
            elif not isinstance(text, str):
                problems.append(f"{at}{label}: must be a string")
                texts.append(None)
            else:
                compiled, found = text_compile(text, declared=declared, where=f"{at}{label}")
                problems.extend(found)
                texts.append(compiled)
        problems.extend(params_problems(params, where=f"{at}params"))
        return Part(texts[0], texts[1], dict(params or {}) if isinstance(params, Mapping) else {})

    base = part(system, user, params, prefix)
    if base.system is None and base.user is None and not problems:
        problems.append(f"{prefix}system: a version needs a system or a user text")
    by_model: dict[str, Part] = {}
    by_provider: dict[str, Part] = {}
    if variants not in (None, []):
        if not isinstance(variants, Sequence) or isinstance(variants, str):
            problems.append(f"{prefix}variants: must be a list")
            variants = []
        for index, variant in enumerate(variants):
            at = f"{prefix}variants[{index}]"
            if not isinstance(variant, Mapping):
                problems.append(f"{at}: must be an object")
                continue
            if unknown := sorted(set(variant) - {"model", "provider", "system", "user", "params"}):
                problems.append(f'{at}: unknown key "{unknown[0]}" (expected model or provider, system, user, params)')
            targets = [key for key in ("model", "provider") if variant.get(key) is not None]
            if len(targets) != 1 or not isinstance(variant[targets[0]], str) or not variant[targets[0]]:
                problems.append(f"{at}: name exactly one 'model' (a model id) or 'provider' (a provider slug)")
                continue
            table = by_model if targets[0] == "model" else by_provider
            if variant[targets[0]] in table:
                problems.append(f'{at}.{targets[0]}: a second variant for "{variant[targets[0]]}"')
            # A variant's missing text or parameter is the base's (checked once, there).
            own = part(variant.get("system"), variant.get("user"), variant.get("params"), f"{at}.")
            table[variant[targets[0]]] = Part(own.system if "system" in variant else base.system,
                                              own.user if "user" in variant else base.user,
                                              {**base.params, **own.params})
    if problems:
        raise TemplateRefused(problems)
    return CompiledVersion(name=name, version=version, variables=declared, base=base, by_model=by_model,
                           by_provider=by_provider)


def variables_bind(version: CompiledVersion, given: Mapping[str, Any], *,
                   supplied: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Every declared variable's text: the request's value, else what the caller supplies (`supplied`, e.g. a
    translation's text, used only for declared names), else the default. Raises VariableError for a variable
    that is missing, of the wrong type, or not declared."""
    for name in given:
        if name not in version.variables:
            raise VariableError(f"The prompt '{version.name}' (version {version.version}) has no variable '{name}'.",
                                code="prompt_variable_unknown", name=str(name))
    texts = {}
    for name, variable in version.variables.items():
        if name in given:
            value = value_coerce(variable, given[name])
        elif supplied is not None and name in supplied:
            value = supplied[name]
        elif variable.default is not None:
            value = variable.default
        else:
            raise VariableError(f"The prompt '{version.name}' (version {version.version}) needs the variable "
                                f"'{name}'.", code="prompt_variable_missing", name=name)
        texts[name] = _text(value)
    return texts


def compiled_render(compiled: Compiled | None, texts: Mapping[str, str]) -> str | None:
    if compiled is None:
        return None
    return "".join(part if type(part) is str else texts[part[0]] for part in compiled)
