from django.core.management.base import BaseCommand, CommandError

from llmhub.errors import ConfigurationError
from registry.services import secret_rotate_all


class Command(BaseCommand):
    help = "Re-encrypt every stored API key under the first key of LLMHUB_ENCRYPTION_KEYS."

    def handle(self, *args, **options) -> None:
        try:
            rewritten = secret_rotate_all()
        except ConfigurationError as error:
            raise CommandError(error.message) from None
        self.stdout.write(f"Re-encrypted {rewritten} key(s).")
