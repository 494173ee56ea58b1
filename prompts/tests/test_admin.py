"""Admin: versions are added (numbered for the template) and refused when unsafe; a saved version is read-only; a
label is moved on the template's page and served at once."""

import pytest
from django.urls import reverse

from prompts.models import PromptLabel, PromptTemplate, PromptVersion
from prompts.services import prompt_version_create, prompt_version_get
from registry.tests.admin_forms import admin_post


@pytest.fixture
def template(db):
    prompt_version_create(name="support", system="Help with {{ product }}.", label="production",
                          variables={"product": {"type": "str", "default": "llmhub"}})
    return PromptTemplate.objects.get(name="support")


def served(name: str) -> int:
    return prompt_version_get(name).version


@pytest.mark.parametrize("text", ["Hi {{ request }}", "Hi {{ product.__class__ }}", "{% load static %}",
                                  "{{ product|upper }}"])
def test_it_refuses_an_unsafe_version_when_saved(admin_client, template, text):
    response = admin_post(admin_client, reverse("admin:prompts_promptversion_add"), template=template.pk,
                          system=text, variables='{"product": {"type": "str"}}', params="{}", variants="[]")

    assert response.status_code == 200  # the form again, with the error
    assert "not allowed" in response.text or "not a declared variable" in response.text
    assert PromptVersion.objects.filter(template=template).count() == 1


def test_it_adds_the_next_version_and_moves_a_label_to_it(admin_client, template):
    response = admin_post(admin_client, reverse("admin:prompts_promptversion_add"), template=template.pk,
                          system="Help with {{ product }}, briefly.", variables='{"product": {"type": "str"}}',
                          params='{"temperature": 0.1}', variants="[]")
    assert response.status_code == 302, response.text
    assert list(template.versions.values_list("version", flat=True).order_by("version")) == [1, 2]
    assert served("support") == 1

    label = PromptLabel.objects.get(template=template, name="production")
    new = PromptVersion.objects.get(template=template, version=2)
    response = admin_post(admin_client, reverse("admin:prompts_prompttemplate_change", args=[template.pk]),
                          **{"labels-0-version": new.pk})
    assert response.status_code == 302, response.text
    assert PromptLabel.objects.get(pk=label.pk).version == new
    assert served("support") == 2


def test_it_shows_a_saved_version_read_only(admin_client, template):
    version = template.versions.get()
    url = reverse("admin:prompts_promptversion_change", args=[version.pk])

    page = admin_client.get(url)
    assert page.status_code == 200 and 'name="_save"' not in page.text
    admin_client.post(url, {"template": template.pk, "system": "changed"})
    assert PromptVersion.objects.get(pk=version.pk).system == "Help with {{ product }}."
