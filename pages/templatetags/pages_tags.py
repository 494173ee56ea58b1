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
def option_label(row) -> str:
    """A model as a picker lists it: "Demo · healthy · $0.50 / $1.50", or "Demo Premium · requires Premium"
    (app.js rewrites the status as it changes)."""
    model = row.model
    if not row.allowed:
        return f"{model.display_name} · requires {model.required_tier.name}"
    prices = f"{price(model.input_price_per_million)} / {price(model.output_price_per_million)}"
    return f"{model.display_name} · {row.health.status} · {prices}"


# What a connectivity test's generic error (generation/connectivity.py) means, in plain words.
TEST_ERRORS = {
    "unreachable": "Could not connect: no answer from that address (a wrong URL, the server is off, or a firewall "
                   "is in the way).",
    "timeout": "The endpoint did not answer in time.",
    "key rejected": "The endpoint refused the API key (HTTP 401 or 403): check the key, and that it may use this "
                    "model.",
    "model not found": "The endpoint does not know this model name (HTTP 404): check the upstream model name.",
    "address not allowed": "This address is not allowed: llmhub calls only public endpoints, never private or "
                           "internal addresses.",
    "bad response": "The endpoint answered HTTP 200, but not with an OpenAI-style chat completion.",
    "response too large": "The endpoint's answer was too large for a test.",
    "key unreadable": "The stored key cannot be decrypted any more: type the key again.",
    "key or headers invalid": "The key or a header holds characters HTTP cannot carry: type the key again.",
    "test crashed": "The test itself failed (not the endpoint): try again.",
}
HTTP_MEANINGS = {400: "the request was refused as malformed", 404: "not found", 408: "the endpoint timed out",
                 429: "too many requests: rate-limited", 500: "a server error on the endpoint's side",
                 502: "a gateway in front of the endpoint failed", 503: "the endpoint is unavailable",
                 504: "a gateway in front of the endpoint timed out"}


@register.filter
def test_error(error: str) -> str:
    """ "streaming: HTTP 500" → "Streaming: HTTP 500 (a server error on the endpoint's side)." and so on."""
    feature, _, reason = error.rpartition(": ")
    if reason.startswith("HTTP ") and reason[5:].isdigit():
        meaning = HTTP_MEANINGS.get(int(reason[5:]), "an unexpected answer")
        text = f"The endpoint answered {reason} ({meaning})."
    else:
        text = TEST_ERRORS.get(reason, reason)
    if feature:
        text = f"{feature.replace('_', ' ').capitalize()} check: {text[0].lower()}{text[1:]}"
    return text


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
