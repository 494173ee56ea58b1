"""Django's error reports (the DEBUG page, the 500 e-mails) without secrets.

Django's own filter hides settings and headers by name, but only with DEBUG off, and it shows every local
variable of every frame: with DEBUG on, a failing upstream call put `Authorization: Bearer <the stored key>`
on the page. Here the filter is active in both modes and also hides posted fields by name, and the reporter
removes from the rendered report every secret found anywhere in the failing frames (a value held under a
sensitive name: `api_key`, an `Authorization` header, ...), plus anything that reads `Bearer <token>`.
"""

import dataclasses
import re
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Any

from django.utils.html import escape
from django.views.debug import ExceptionReporter, SafeExceptionReporterFilter

_BEARER = re.compile(r"(?i)\b(bearer|basic)(\s+)[^\s'\"<>&,;)}\]]+")
# A secret shorter than this is not looked for in the text (it would blank out ordinary words).
_MIN_SECRET_LENGTH = 6
_MAX_DEPTH = 4


class SecretsFilter(SafeExceptionReporterFilter):
    """Active with DEBUG on too; posted fields with a sensitive name (`api_key`, `password`, ...) are hidden."""

    def is_active(self, request: Any) -> bool:
        return True

    def get_post_parameters(self, request: Any) -> Any:
        parameters = super().get_post_parameters(request)
        hidden = [name for name in parameters if self.hidden_settings.search(name)]
        if hidden:
            parameters = parameters.copy()
            for name in hidden:
                parameters[name] = self.cleansed_substitute
        return parameters


class SecretsHiddenReporter(ExceptionReporter):
    """Renders Django's report, then blanks out every secret the failing frames and the request held."""

    def get_traceback_html(self) -> str:
        return self._redacted(super().get_traceback_html(), html=True)

    def get_traceback_text(self) -> str:
        return self._redacted(super().get_traceback_text(), html=False)

    def _redacted(self, text: str, *, html: bool) -> str:
        substitute = SafeExceptionReporterFilter.cleansed_substitute
        for secret in sorted(self._secrets(), key=len, reverse=True):
            text = text.replace(secret, substitute)
            if html:
                text = text.replace(escape(secret), substitute)
        return _BEARER.sub(rf"\1\2{substitute}", text)

    def _secrets(self) -> set[str]:
        hidden = SafeExceptionReporterFilter.hidden_settings
        found: set[str] = set()
        for frame in _frames(self.exc_value, self.tb):
            for name, value in frame.f_locals.items():
                _collect(name, value, hidden, found, 0)
        if self.request is not None:
            for name, value in getattr(self.request, "META", {}).items():
                _collect(name, value, hidden, found, 0)
            for name, value in getattr(self.request, "POST", {}).items():
                _collect(name, value, hidden, found, 0)
        return {secret for secret in found if len(secret) >= _MIN_SECRET_LENGTH}


def _frames(exc_value: BaseException | None, tb: TracebackType | None) -> Iterator[Any]:
    """Every frame of the exception, its causes and its context (Django shows them all)."""
    seen: set[int] = set()
    tracebacks = [tb]
    while exc_value is not None and id(exc_value) not in seen:
        seen.add(id(exc_value))
        tracebacks.append(exc_value.__traceback__)
        exc_value = exc_value.__cause__ or exc_value.__context__
    frames: set[int] = set()
    for current in tracebacks:
        while current is not None:
            if id(current.tb_frame) not in frames:
                frames.add(id(current.tb_frame))
                yield current.tb_frame
            current = current.tb_next


def _collect(name: str, value: Any, hidden: re.Pattern, found: set[str], depth: int) -> None:
    """Adds to `found` the strings held under a sensitive name in `value` (mappings, sequences, dataclasses and
    objects' attributes, a few levels deep)."""
    sensitive = bool(hidden.search(str(name)))
    if isinstance(value, str | bytes):
        text = value.decode("latin-1") if isinstance(value, bytes) else value
        if sensitive:
            found.add(text)
            found.update(match.group(0).split()[-1] for match in _BEARER.finditer(text))
        return
    if depth >= _MAX_DEPTH:
        return
    try:
        if isinstance(value, Mapping):
            items = list(value.items())
        elif isinstance(value, list | tuple | set | frozenset):
            items = [(name, item) for item in value]
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            items = [(field.name, getattr(value, field.name, None)) for field in dataclasses.fields(value)]
        elif hasattr(value, "__dict__") and not isinstance(value, type):
            items = [(key, item) for key, item in vars(value).items() if hidden.search(key)]
        else:
            return
    except Exception:  # a value that cannot be looked into is shown as Django shows it
        return
    for key, item in items:
        _collect(key if isinstance(key, str) else name, item, hidden, found, depth + 1)
