"""The template language: `{{ name }}` of a declared variable and nothing else; refused when saved otherwise."""

import pytest

from prompts.rendering import TemplateRefused, version_compile
from prompts.services import PromptInvalid, ResolvedPrompt, prompt_render

VARIABLES = {"topic": {"type": "str"}, "count": {"type": "int", "default": 3}, "ratio": {"type": "float", "default": 0.5},
             "formal": {"type": "bool", "default": False},
             "tone": {"type": "enum", "values": ["warm", "dry"], "default": "warm"}}


def compiled(system: str = "About {{ topic }}.", user: str | None = "{{count}} points, {{ tone }}", **kwargs):
    return ResolvedPrompt("t", 1, version_compile(name="t", version=1, system=system, user=user,
                                                   variables=kwargs.pop("variables", VARIABLES), **kwargs))


def test_it_substitutes_declared_variables_with_their_defaults_and_types():
    rendered = prompt_render(compiled(user="{{ count }} {{ ratio }} {{ formal }} {{ tone }}"),
                             variables={"topic": "tea", "count": 5, "formal": True})

    assert (rendered.system, rendered.user) == ("About tea.", "5 0.5 true warm")


def test_it_renders_identically_for_the_same_input():
    prompt = compiled()
    first = prompt_render(prompt, variables={"topic": "tea", "count": 2})

    assert all(prompt_render(prompt, variables={"count": 2, "topic": "tea"}) == first for _ in range(100))


def test_it_substitutes_values_once_never_reading_them_as_template_text():
    rendered = prompt_render(compiled(), variables={"topic": "{{ count }} {% load x %} {{ request.user }}"})

    assert rendered.system == "About {{ count }} {% load x %} {{ request.user }}."


@pytest.mark.parametrize("text", [
    "{{ request }}", "{{ topic.__class__ }}", "{{ topic|upper }}", "{{ topic() }}", "{{ topic[0] }}",
    "{% load static %}", "{# hidden #}", "{{ topic ", "{{ settings.SECRET_KEY }}", "{% debug %}",
])
def test_it_refuses_a_template_that_tries_to_reach_code_or_data(text):
    with pytest.raises(TemplateRefused) as refused:
        compiled(system=f"Hello {text}")

    assert refused.value.problems and all(problem.startswith("system:") for problem in refused.value.problems)


def test_it_names_every_problem_with_its_path():
    with pytest.raises(TemplateRefused) as refused:
        version_compile(name="t", version=1, system="{{ a.b }}", user="{% x %}", variables={"n": {"type": "list"}},
                        params={"temperature": 5, "top_k": 1}, variants=[{"model": "demo", "system": "{{ x|y }}"}])

    assert refused.value.problems == [
        "variables.n.type: must be one of str, int, float, bool, enum",
        "system: '{{ a.b }}' is not allowed: only a declared variable's name, with no attribute, index, call or filter",
        "user: template tags ({% %}) are not allowed, only {{ variable }} (at character 0)",
        'params: unknown parameter "top_k" (expected temperature, max_tokens)',
        "params.temperature: must be a number from 0 to 2",
        "variants[0].system: '{{ x|y }}' is not allowed: only a declared variable's name, with no attribute, index, "
        "call or filter",
    ]


@pytest.mark.parametrize(("variables", "code", "name"), [
    ({}, "prompt_variable_missing", "topic"),
    ({"topic": "x", "count": "5"}, "prompt_variable_invalid", "count"),
    ({"topic": "x", "formal": 1}, "prompt_variable_invalid", "formal"),
    ({"topic": "x", "tone": "loud"}, "prompt_variable_invalid", "tone"),
    ({"topic": "x", "colour": "red"}, "prompt_variable_unknown", "colour"),
])
def test_it_names_the_variable_a_request_gets_wrong(variables, code, name):
    with pytest.raises(PromptInvalid) as refused:
        prompt_render(compiled(), variables=variables)

    assert refused.value.code == code and refused.value.status == 400
    assert refused.value.extra == {"param": f"metadata.variables.{name}", "variable": name}
    assert f"'{name}'" in refused.value.message


def test_it_chooses_the_models_variant_then_the_providers_then_the_base():
    prompt = compiled(variants=[{"provider": "local", "system": "Provider {{ topic }}"},
                                {"model": "demo", "system": "Model {{ topic }}", "params": {"temperature": 0.1}}],
                      params={"temperature": 0.7, "max_tokens": 50})

    class Model:
        def __init__(self, id, provider):
            self.id, self.provider = id, provider

    def system(model):
        return prompt_render(prompt, variables={"topic": "x"}, model=model)

    assert system(Model("demo", "local")).system == "Model x"
    assert system(Model("demo", "local")).params == {"temperature": 0.1, "max_tokens": 50}
    assert system(Model("other", "local")).system == "Provider x"
    assert system(Model("other", "openai")).system == "About x."
    assert system(Model("other", "openai")).user == "3 points, warm"  # a variant's missing part is the base's
