from django.core.management.base import BaseCommand, CommandError
from django.db import connection

from usage.bench_fill import usage_bench_fill


class Command(BaseCommand):
    help = ("Fills a BENCHMARK PostgreSQL database with usage rows (COPY) over the last days and builds their "
            "roll-ups (make bench-dashboard). Deletes the usage log and roll-ups first.")

    def add_arguments(self, parser) -> None:
        parser.add_argument("--rows", type=int, default=10_000_000)
        parser.add_argument("--days", type=int, default=30)
        parser.add_argument("--users", type=int, default=2000)
        parser.add_argument("--seed", type=int, default=1)

    def handle(self, *args, rows: int, days: int, users: int, seed: int, **options) -> None:
        name = connection.settings_dict["NAME"]
        if connection.vendor != "postgresql" or "bench" not in name:
            raise CommandError(f"refusing to fill {connection.vendor} database {name!r}: use a PostgreSQL database "
                               "whose name says 'bench' (this deletes its usage log)")
        if rows < days or users < 2 or days < 1:
            raise CommandError("need --days >= 1, --rows >= --days and --users >= 2")
        report = usage_bench_fill(rows=rows, days=days, users=users, seed=seed,
                                  log=lambda line: self.stdout.write(line))
        self.stdout.write(f"filled: {report.rows} rows, {report.users} users, {report.keys} keys, {report.rollups} "
                          f"roll-up buckets; copy {report.copy_seconds:.1f} s, roll-ups {report.rollup_seconds:.1f} s")
