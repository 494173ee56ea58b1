"""Posting Django admin forms the way a browser does: start from what the page rendered, change some fields."""

from typing import Any

from django.forms import MultiWidget
from django.test import Client


def rendered_form_data(response) -> dict[str, Any]:
    """The POST data a browser would send back unchanged for an admin add/change page (form and inlines)."""
    assert response.status_code == 200, response.status_code
    forms = [response.context["adminform"].form]
    for inline in response.context["inline_admin_formsets"]:
        forms += [inline.formset.management_form, *inline.formset.forms]
    data: dict[str, Any] = {}
    for form in forms:
        for name in form.fields:
            value, widget, key = form[name].value(), form[name].field.widget, form.add_prefix(name)
            if isinstance(widget, MultiWidget):  # e.g. a split date and time: one input per part
                parts = value if isinstance(value, list) else widget.decompress(value)
                for suffix, part_widget, part in zip(widget.widgets_names, widget.widgets, parts, strict=True):
                    data[key + suffix] = part_widget.format_value(part) or ""
            elif value is not None and value is not False:
                data[key] = "on" if value is True else value
    return data


def admin_post(client: Client, url: str, **changes: Any):
    """GETs the admin page at `url`, applies `changes` (None removes a field) and POSTs it back."""
    data = rendered_form_data(client.get(url))
    for name, value in changes.items():
        if value is None:
            data.pop(name, None)
        else:
            data[name] = value
    return client.post(url, data)
