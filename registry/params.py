"""Per-model request adaptation, as the registry declares it (a model's `request_params`).

    {"unsupported": ["temperature", "top_p"],                # parameters the model does not accept
     "renamed": {"max_tokens": "max_completion_tokens"},    # sent under the model's own name
     "on_unsupported": "drop",                              # or "refuse": a 400 naming the parameter
     "no_system_role": true}                                # system messages folded into the first user message

Declared per model rather than coded per provider, so an operator fixes a model that refuses a parameter by
editing the registry. Pure data: `generation.adaptation` applies it to a request.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

ON_UNSUPPORTED = ("drop", "refuse")
_KEYS = {"unsupported", "renamed", "on_unsupported", "no_system_role"}


@dataclass(frozen=True, slots=True)
class RequestParams:
    unsupported: frozenset[str] = frozenset()
    renamed: tuple[tuple[str, str], ...] = ()
    refuse: bool = False  # on_unsupported "refuse": a 400 instead of dropping the parameter
    fold_system: bool = False  # no_system_role: the model takes no system message

    @property
    def empty(self) -> bool:
        return not self.unsupported and not self.renamed and not self.fold_system


NO_PARAMS = RequestParams()


def request_params_problems(value: Any, *, where: str = "request_params") -> list[str]:
    """Every problem of a `request_params` value, by its path; [] when it is valid."""
    if not isinstance(value, Mapping):
        return [f"{where}: must be an object"]
    problems = [f'{where}: unknown key "{key}" (expected unsupported, renamed, on_unsupported, '
                f'no_system_role)'
                for key in sorted(set(value) - _KEYS)]
    unsupported = value.get("unsupported", [])
    if not isinstance(unsupported, list) or not all(isinstance(name, str) and name for name in unsupported):
        problems.append(f"{where}.unsupported: must be a list of parameter names")
    renamed = value.get("renamed", {})
    if not isinstance(renamed, Mapping) or not all(isinstance(target, str) and target and source
                                                   for source, target in renamed.items()):
        problems.append(f"{where}.renamed: must map parameter names to the names the model takes")
    elif isinstance(unsupported, list) and (clash := sorted(set(renamed.values()) & set(unsupported))):
        problems.append(f'{where}.renamed: "{clash[0]}" is both a rename target and unsupported')
    if value.get("on_unsupported", "drop") not in ON_UNSUPPORTED:
        problems.append(f'{where}.on_unsupported: must be "drop" or "refuse"')
    if not isinstance(value.get("no_system_role", False), bool):
        problems.append(f"{where}.no_system_role: must be true or false")
    return problems


def request_params_parse(value: Any) -> RequestParams:
    """A stored (valid) value as RequestParams; anything unusable is no adaptation."""
    if not value or request_params_problems(value):
        return NO_PARAMS
    params = RequestParams(unsupported=frozenset(value.get("unsupported", ())),
                           renamed=tuple((value.get("renamed") or {}).items()),
                           refuse=value.get("on_unsupported") == "refuse",
                           fold_system=value.get("no_system_role") is True)
    return NO_PARAMS if params.empty else params
