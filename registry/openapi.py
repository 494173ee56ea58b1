"""How the registry's authentication appears in the OpenAPI schema.

Apart from registry/authentication.py on purpose: drf-spectacular's extensions module pulls in DRF's fields,
`requests`, `django.test` and (through DRF's compat) psycopg, about 17 MB that a process serving only `/v1`
never needs. registry/apis.py imports this module, so it is loaded with the URLconf, before any schema is made.
"""

from drf_spectacular.extensions import OpenApiAuthenticationExtension

from registry.authentication import ApiKeyAuthentication


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    """Describes hub API keys in the OpenAPI schema (drf-spectacular finds it by `target_class`)."""

    target_class = ApiKeyAuthentication
    name = "hubApiKey"

    def get_security_definition(self, auto_schema) -> dict[str, str]:
        return {"type": "http", "scheme": "bearer", "description": "A hub API key: `Authorization: Bearer lh-…`."}
