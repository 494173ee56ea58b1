"""Drives the real router with a simulated fleet (routing/simulation.py) and prints the table of results."""

import itertools
import os
import time
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from routing.simulation import bandit_scenario, cost_scenario, drift_scenario, routing_overhead

RESULTS = Path(settings.BASE_DIR) / "bench" / "RESULTS.md"
START, END = "<!-- simulate_fleet -->", "<!-- /simulate_fleet -->"
BUDGET_US = 200.0  # routing may add at most 0.2 ms per request at 20 candidate models


class Command(BaseCommand):
    help = "Drive the router with a simulated fleet: cost-aware vs oracle, drift, bandit regret, routing overhead."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--requests", type=int, default=10_000, help="requests of the cost scenario")
        parser.add_argument("--write", action="store_true", help="write the table into bench/RESULTS.md")

    def handle(self, *args, requests: int, write: bool, **options) -> None:
        started = time.monotonic()
        cost = cost_scenario(requests=requests)
        drifts = [drift_scenario(kind="latency"), drift_scenario(kind="failure")]
        bandit = bandit_scenario()
        overhead = routing_overhead()
        checks = {
            "cost within 5% of the oracle at >= 99% success": cost["ratio"] <= 1.05 and cost["success"] >= 0.99,
            "performance leaves a degrading model within its bound": all(
                d["moved_after"] is not None and d["moved"] <= d["bound"] for d in drifts),
            "bandit regret sublinear": _sublinear(bandit["regret"]),
            f"routing <= {BUDGET_US:.0f} us at 20 models": all(
                micros <= BUDGET_US for name, micros in overhead.items() if "request path" in name),
        }
        lines = [
            f"Seeded, simulated clock of 10 requests/s; {time.monotonic() - started:.1f} s. "
            "`python manage.py simulate_fleet` (also `make bench`). Overheads are this process's CPU time per "
            f"request; load average while measured: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs.", "",
            "| scenario | figure | value | target | verdict |", "|---|---|---|---|---|",
            f"| cost-aware ({cost['requests']:,} requests, 6 models) | cost / oracle's ({cost['oracle']}) | "
            f"{cost['ratio']:.3f} | <= 1.05 | {_ok(cost['ratio'] <= 1.05)} |",
            f"| | success (with fallbacks) | {cost['success']:.4%} | >= 99% | {_ok(cost['success'] >= 0.99)} |",
        ]
        for drift in drifts:
            what, unit = ("latency 100 -> 800 ms", "requests") if drift["kind"] == "latency" else \
                ("failures 0% -> 50%", "failures")
            passed = drift["moved_after"] is not None and drift["moved"] <= drift["bound"]
            lines.append(f"| performance, fastest model degrades mid-run ({what}) | {unit} until it is left "
                         f"({drift['moved_after']} requests) | {drift['moved']} | <= {drift['bound']} {unit} (bound) | "
                         f"{_ok(passed)} |")
            lines.append(f"| | its share of later requests (re-probes) | {drift['share_after']:.2%} | | |")
        horizons = sorted(bandit["regret"])
        for horizon in horizons:
            regret = bandit["regret"][horizon]
            lines.append(f"| preference (Thompson), 6 models, best liked {bandit['best']:.2f} | regret at {horizon:,} "
                         f"| {regret:.1f} ({regret / horizon:.4f}/request) | sublinear | "
                         f"{_ok(_sublinear(bandit['regret'])) if horizon == horizons[-1] else ''} |")
        for name, micros in overhead.items():
            lines.append(f"| routing overhead, 20 candidate models (CPU time) | {name} | {micros:.1f} us/request | "
                         f"<= {BUDGET_US:.0f} us | {_ok(micros <= BUDGET_US) if 'request path' in name else ''} |")
        table = "\n".join(lines)
        self.stdout.write(table)
        if write:
            _results_write(table)
            self.stdout.write(f"\n(written to {RESULTS})")
        if not all(checks.values()):
            raise CommandError("missed: " + "; ".join(name for name, ok in checks.items() if not ok))


def _sublinear(regret: dict[int, float]) -> bool:
    """Regret per request falls as the horizon grows (tenfold horizon, well under tenfold regret)."""
    horizons = sorted(regret)
    return all(regret[later] / later < regret[earlier] / earlier * 0.6
               for earlier, later in itertools.pairwise(horizons))


def _ok(passed: bool) -> str:
    return "pass" if passed else "**FAIL**"


def _results_write(table: str) -> None:
    block = f"{START}\n## Routing (`manage.py simulate_fleet`)\n\n{table}\n{END}"
    current = RESULTS.read_text() if RESULTS.exists() else ""
    if START in current and END in current:
        current = current[:current.index(START)] + block + current[current.index(END) + len(END):]
    else:
        current = current.rstrip("\n") + "\n\n" + block + "\n"
    RESULTS.write_text(current)
