from django.core.management.base import BaseCommand, CommandError

from registry.models import ApiKey
from registry.services import api_key_revoke


class Command(BaseCommand):
    help = ("Revoke a hub API key by its prefix (the `lh-…` admin lists). Every app process refuses it within "
            "LLMHUB_REGISTRY_CACHE_CHECK_SECONDS.")

    def add_arguments(self, parser) -> None:
        parser.add_argument("prefix", help="the key's prefix, as admin shows it (e.g. lh-AbCdEfG)")

    def handle(self, *args, prefix: str, **options) -> None:
        keys = list(ApiKey.objects.filter(prefix=prefix, revoked_at__isnull=True)[:2])
        if not keys:
            raise CommandError(f"No active API key has the prefix {prefix!r}.")
        if len(keys) > 1:
            raise CommandError(f"Several active API keys have the prefix {prefix!r}: revoke them in admin.")
        api_key_revoke(api_key=keys[0])
        self.stdout.write(f"Revoked the API key {prefix} of {keys[0].user}.")
