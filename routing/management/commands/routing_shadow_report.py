"""Prints the shadow policies' report: agreement, expected cost and latency against the live policies."""

from django.core.management.base import BaseCommand

from routing.selectors import shadow_report


class Command(BaseCommand):
    help = "Compare each tier's live routing policy with its shadow policy over recent traffic."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--hours", type=float, default=24.0, help="how far back to look (default 24)")

    def handle(self, *args, hours: float, **options) -> None:
        report = shadow_report(hours=hours)
        if not report:
            self.stdout.write(f"No request of the last {hours:g} h ran a shadow policy (set one on a routing policy "
                              "in admin).")
            return
        self.stdout.write("| tier | live | shadow | requests | agreement | expected cost live -> shadow | "
                          "expected latency live -> shadow |")
        self.stdout.write("|---|---|---|---|---|---|---|")
        for row in report:
            change = "" if row["cost_change"] is None else f" ({row['cost_change']:+.1%})"
            self.stdout.write(
                f"| {row['tier']} | {row['live_policy']} | {row['shadow_policy']} | {row['requests']} | "
                f"{row['agreement']:.1%} | {row['live_expected_cost']:.6f} -> {row['shadow_expected_cost']:.6f}{change} | "
                f"{row['live_expected_latency_ms']:.0f} -> {row['shadow_expected_latency_ms']:.0f} ms |")
