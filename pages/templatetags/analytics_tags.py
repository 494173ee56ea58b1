"""Filters of the analytics pages: every figure may be missing (no requests, no tests): it shows as a dash."""

from django import template

from pages.templatetags.pages_tags import money, percent

register = template.Library()
DASH = "–"


@register.filter
def ms(value: float | None) -> str:
    if value is None:
        return DASH
    return f"{value / 1000:,.2f} s" if value >= 10_000 else f"{value:,.0f} ms" if value >= 10 else f"{value:.1f} ms"


@register.filter
def rate(value: float | None) -> str:
    return DASH if value is None else percent(value)


@register.filter
def per_second(value: float | None) -> str:
    return DASH if value is None else f"{value:,.1f}/s"


@register.filter
def money_or_dash(value) -> str:
    return DASH if value is None else money(value)


@register.filter
def get(mapping: dict, key: str):
    return mapping.get(key)
