"""`manage.py simulate_upstream`: serve the simulated OpenAI-compatible upstream for the demo."""

from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand

from generation import simulator


class Command(BaseCommand):
    help = "Serve the simulated OpenAI-compatible upstream (faults and control endpoints: generation/simulator.py)."
    # The simulator touches neither the database nor the app registry, so skip the system checks.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: ArgumentParser) -> None:
        simulator.add_arguments(parser)

    def handle(self, *args: Any, host: str, port: int, models: list[str] | None, workers: int, **options: Any) -> None:
        self.stdout.write(f"Simulated upstream on http://{host}:{port}/v1")
        simulator.run(host=host, port=port, models=models, workers=workers)
