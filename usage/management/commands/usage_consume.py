import signal
import threading

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from usage.spool import spool_consume, spool_folder
from usage.stream import stream_consume


class Command(BaseCommand):
    help = ("Write the usage rows that app processes hand on to the usage log, in large batches: from the Redis stream "
            "(LLMHUB_USAGE_STREAM_URL), else (embedded) from the spool beside the SQLite database. SIGTERM or SIGINT: "
            "the batch in hand is written first.")

    def add_arguments(self, parser) -> None:
        parser.add_argument("--batch-size", type=int, default=5000)
        parser.add_argument("--once", action="store_true", help="stop once nothing is left to write")
        parser.add_argument("--if-configured", action="store_true",
                            help="exit quietly when app processes write their own rows (`make run`)")

    def handle(self, *args, batch_size: int, once: bool, if_configured: bool, **options) -> None:
        url = settings.LLMHUB["USAGE_STREAM_URL"]
        folder = None if url else spool_folder()
        if not url and folder is None:
            if if_configured:
                return
            raise CommandError("No usage stream (LLMHUB_USAGE_STREAM_URL, by default REDIS_URL, is empty) and no spool "
                               "(LLMHUB_USAGE_SPOOL is off, or the database is not SQLite and LLMHUB_USAGE_SPOOL_DIR "
                               "is empty): app processes write their own usage rows.")
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        if url:
            written = stream_consume(url=url, batch_size=batch_size, stop=stop, once=once)
        else:
            written = spool_consume(folder=folder, batch_size=batch_size, stop=stop, once=once)
        self.stdout.write(f"usage rows written: {written}")
