"""The apps' imports run one way and form no circle (STYLE.md): read from the source, so an import inside a function
or under TYPE_CHECKING counts as much as one at the top of a module."""

import ast
from pathlib import Path

import pytest
from django.conf import settings

# Reads the source only: the same test in either suite.
pytestmark = pytest.mark.mode_independent
BASE = Path(settings.BASE_DIR)
APPS = ("llmhub", "registry", "health", "usage", "prompts", "feedback", "routing", "experiments", "analytics", "generation",
        "translation", "pages")
# What each app may import besides itself. llmhub's shared helpers import no app; the modules that compose the apps
# (URLs, ASGI, the Celery app, the test helpers) sit on top of them all.
ALLOWED = {
    "llmhub": set(),
    "registry": {"llmhub"},
    "health": {"llmhub", "registry"},
    "usage": {"llmhub", "registry"},
    "prompts": {"llmhub", "registry"},
    "feedback": {"llmhub", "registry", "usage"},
    "routing": {"llmhub", "registry", "health", "usage", "feedback"},
    "experiments": {"llmhub", "registry", "usage", "prompts", "feedback"},
    "analytics": {"llmhub", "registry", "health", "usage", "feedback"},
    "generation": {"llmhub", "registry", "health", "usage", "prompts", "feedback", "routing", "experiments"},
    "translation": {"llmhub", "registry", "health", "usage", "prompts", "feedback", "routing", "experiments",
                    "generation"},
    "pages": set(APPS),
}
COMPOSERS = {"llmhub.urls", "llmhub.asgi", "llmhub.celery", "llmhub.testing", "llmhub.api_docs"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(BASE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources() -> dict[str, Path]:
    return {
        _module_name(path): path
        for app in APPS for path in (BASE / app).rglob("*.py")
        if not {"tests", "migrations"} & set(path.relative_to(BASE).parts)
    }


def _imports(name: str, path: Path, modules: set[str]) -> set[str]:
    """The project's modules that `name` imports (a `from package import module` names the module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    sources = _sources()
    return {name: _imports(name, path, set(sources)) for name, path in sources.items()}


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph.get(node, ())):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return circles


def test_it_finds_no_import_circle():
    assert _circles(_graph()) == []


def test_it_finds_no_import_against_the_layers():
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in _graph().items() if module not in COMPOSERS
        for target in targets
        if (app := module.partition(".")[0]) != (other := target.partition(".")[0]) and other not in ALLOWED[app]
    )
    assert wrong == []


def test_it_sees_a_circle_and_a_reverse_import():
    graph = {"registry.a": {"registry.b"}, "registry.b": {"registry.c"}, "registry.c": {"registry.a"}, "usage.d": set()}
    assert _circles(graph) == [["registry.a", "registry.b", "registry.c"]]
    assert _imports("registry.selectors", BASE / "registry" / "selectors.py", set(_sources())) >= {"registry.models"}
