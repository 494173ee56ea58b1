from decimal import Decimal

from django import template

register = template.Library()

CENT = Decimal("0.01")
MICRO = Decimal("0.000001")


@register.filter
def price(value: Decimal) -> str:
    """$15.00, $0.28, $0.075: cents at least, more digits only when the price has them."""
    value = Decimal(value)
    cents = value.quantize(CENT)
    return f"${cents}" if cents == value else f"${value.normalize():f}"


@register.filter
def thousands(value: int) -> str:
    return f"{value:,}"


@register.filter
def check(value: bool | None) -> str:
    """The mark of one test check: passed, failed, or not known (not reached, or the check itself failed)."""
    return {True: "yes", False: "no"}.get(value, "unknown")


@register.filter
def field(form, name: str):
    """`form|field:"task_defaults.generation"`: a nested field, which the dot syntax cannot name."""
    return form[name]


@register.filter
def money(value) -> str:
    """A usage amount: cents from a cent up ($1,234.50), below that to the micro-dollar ($0.000123)."""
    value = Decimal(value)
    if value == 0 or abs(value) >= CENT:
        return f"${value.quantize(CENT):,}"
    micro = value.quantize(MICRO)
    return f"${micro.normalize():f}" if micro else "< $0.000001"


@register.filter
def percent(value: float) -> str:
    """0.0345 → 3.5%."""
    return f"{value * 100:.1f}%"
