from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from registry.loader import RegistryFileInvalid
from registry.services import registry_load


class Command(BaseCommand):
    help = "Validate a registry file and upsert it (all or nothing). Without a file, the legacy OPENAI_* variables."

    def add_arguments(self, parser) -> None:
        parser.add_argument("path", nargs="?", default=settings.LLMHUB["MODELS_FILE"])

    def handle(self, *args, path: str, **options) -> None:
        try:
            report = registry_load(path=Path(path))
        except RegistryFileInvalid as error:
            raise CommandError(f"{path} is invalid; nothing was changed:\n" + "\n".join(
                f"  {problem}" for problem in error.problems)) from None
        self.stdout.write(f"Loaded {path}: {report}")
