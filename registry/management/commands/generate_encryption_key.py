from cryptography.fernet import Fernet
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Print a new Fernet key for LLMHUB_ENCRYPTION_KEYS (runs in production before any key is set)."
    # Nothing to check: it reads neither the database nor the settings it helps to fill in.
    requires_system_checks: list[str] = []

    def handle(self, *args, **options) -> None:
        self.stdout.write(Fernet.generate_key().decode())
