"""Validators shared by the registry's serializers and its admin forms; imports nothing of DRF, so the admin
(loaded at start-up) does not pull the API's serializers in."""

from django.core.validators import RegexValidator

# Sent in an HTTP header (`Authorization: Bearer <key>`): printable ASCII only. A CR or LF would end the header
# (and could inject another), other characters cannot be sent at all: every call would fail.
# An HTTP header's name is a token (RFC 9110); the fixture's JSON Schema states the same two rules.
header_name_validator = RegexValidator(
    r"\A[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z", code="invalid_header_name",
    message="A header name is letters, digits and !#$%%&'*+.^_`|~- only (no spaces, no colon).")
header_value_validator = RegexValidator(
    r"\A[\x20-\x7e]*\Z", code="invalid_characters",
    message="Only printable ASCII characters are allowed (no line breaks, tabs or other characters "
            "an HTTP header cannot carry).")
