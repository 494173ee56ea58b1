import signal
import threading

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from usage.stream import stream_consume


class Command(BaseCommand):
    help = ("Write the usage rows that app processes hand to the Redis stream (LLMHUB_USAGE_STREAM_URL) to the usage "
            "log, in large batches. SIGTERM or SIGINT: the batch in hand is written first.")

    def add_arguments(self, parser) -> None:
        parser.add_argument("--batch-size", type=int, default=5000)
        parser.add_argument("--once", action="store_true", help="stop once the stream is empty")

    def handle(self, *args, batch_size: int, once: bool, **options) -> None:
        url = settings.LLMHUB["USAGE_STREAM_URL"]
        if not url:
            raise CommandError("No usage stream (LLMHUB_USAGE_STREAM_URL, by default REDIS_URL, is empty): app processes "
                               "write their own usage rows.")
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        written = stream_consume(url=url, batch_size=batch_size, stop=stop, once=once)
        self.stdout.write(f"usage rows written: {written}")
