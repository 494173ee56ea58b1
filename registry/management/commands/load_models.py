from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from registry.loader import DEFAULT_MODELS_FILE, RegistryFileInvalid, RegistryFileMissing
from registry.services import registry_load


class Command(BaseCommand):
    help = (f"Validate a registry file and upsert it (all or nothing). Without PATH, LLMHUB_MODELS_FILE, else "
            f"{DEFAULT_MODELS_FILE.relative_to(settings.BASE_DIR)}; only when no path is named and that file is "
            "absent, the legacy OPENAI_* variables.")

    def add_arguments(self, parser) -> None:
        parser.add_argument("path", nargs="?", help="the registry file (default: LLMHUB_MODELS_FILE)")

    def handle(self, *args, path: str | None, **options) -> None:
        named = path or settings.LLMHUB["MODELS_FILE"] or None
        try:
            report = registry_load(path=Path(named) if named else None)
        except RegistryFileMissing as error:
            raise CommandError(f"{error.path} does not exist; nothing was changed.") from None
        except RegistryFileInvalid as error:
            raise CommandError(f"{named or DEFAULT_MODELS_FILE} is invalid; nothing was changed:\n" + "\n".join(
                f"  {problem}" for problem in error.problems)) from None
        for warning in report.warnings:
            self.stderr.write(f"WARNING: {warning}")
        self.stdout.write(f"Loaded {report.source}: {report}")
