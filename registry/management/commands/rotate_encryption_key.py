from django.core.management.base import BaseCommand

from registry.services import secret_rotate_all


class Command(BaseCommand):
    help = "Re-encrypt every stored API key under the first key of LLMHUB_ENCRYPTION_KEYS."

    def handle(self, *args, **options) -> None:
        self.stdout.write(f"Re-encrypted {secret_rotate_all()} key(s).")
