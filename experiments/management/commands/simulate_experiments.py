"""`python manage.py simulate_experiments`: the A/A and A/B simulation of the experiments' sequential test
(experiments/simulation.py); prints the table, writes it into bench/RESULTS.md, and fails when a row fails."""

import re
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from experiments.simulation import passed, simulate_all, table

START, END = "<!-- experiments -->", "<!-- /experiments -->"


class Command(BaseCommand):
    help = "Simulates A/A and A/B experiments under continuous monitoring and checks α and power."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--runs", type=int, default=1000)
        parser.add_argument("--alpha", type=float, default=0.05)
        parser.add_argument("--power", type=float, default=0.8)
        parser.add_argument("--min-samples", type=int, default=100)
        parser.add_argument("--seed", type=int, default=12)
        parser.add_argument("--no-write", action="store_true", help="leave bench/RESULTS.md alone")

    def handle(self, *args, runs: int, alpha: float, power: float, min_samples: int, seed: int, no_write: bool,
               **options) -> None:
        outcomes = simulate_all(runs=runs, alpha=alpha, power=power, min_samples=min_samples, seed=seed)
        text = table(outcomes, alpha=alpha, power=power)
        self.stdout.write(text)
        if not no_write:
            results_write(_section(text, runs=runs, alpha=alpha, power=power, min_samples=min_samples, seed=seed))
        if not passed(outcomes, alpha=alpha, power=power):
            raise CommandError("A scenario failed its bound (see the table).")


def _section(text: str, *, runs: int, alpha: float, power: float, min_samples: int, seed: int) -> str:
    return "\n".join([
        START,
        "## Experiments: the sequential test under continuous monitoring (`manage.py simulate_experiments`)",
        "",
        f"{runs} simulated experiments per row, two arms at 50/50, one observation per arm per step and a look after "
        f"every step (from {min_samples} per arm on: the burn-in of the plug-in variance) up to the horizon planned "
        f"for a 5% relative minimum effect at α = {alpha:g} and power {power:.0%} (`stats.horizon`); mSPRT with a "
        "normal mixture, τ = the minimum effect (`experiments/stats.py`). \"naive peeking\" is a fixed-sample "
        "z-test at the same looks, for contrast. Seed " f"{seed}.",
        "",
        text,
        "",
        END,
    ])


def results_write(section: str) -> None:
    """Replaces the experiments section of bench/RESULTS.md (between its markers), or appends it."""
    path = Path(settings.BASE_DIR) / "bench" / "RESULTS.md"
    current = path.read_text() if path.exists() else ""
    if START in current:
        current = re.sub(f"{re.escape(START)}.*?{re.escape(END)}", lambda _: section, current, flags=re.S)
    else:
        current = current.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(current)
