"""Expected latency and success per model: a baseline from the usage roll-ups, refreshed every
`ROUTING_STATS_REFRESH_SECONDS` off the request path, moved by live outcomes (exponentially weighted).

The hot path reads `stats_view()`: a dict in memory, never a query. The baseline is read in a background thread
when it is stale; until the first read finishes the policies use their priors (routing/policies.py)."""

import logging
import threading
import time
from collections.abc import Callable, Mapping
from datetime import timedelta

from django.conf import settings
from django.db import connection

from routing.policies import PRIOR_LATENCY_MS, ModelStats

logger = logging.getLogger(__name__)

# Live outcomes move the expectation by this share each: a model that starts failing falls below a 0.95 floor
# after three failures in a row from 1.0 ((1 - ALPHA_SUCCESS)^3 < 0.95) while one failure among ~50 answers keeps it
# above; a model whose latency jumps from L to J is expected at L + (J - L)(1 - (1 - ALPHA_LATENCY)^k) after k
# requests.
ALPHA_LATENCY = 0.3
ALPHA_SUCCESS = 0.02


class StatsBoard:
    def __init__(self, *, load: Callable[[], Mapping[str, ModelStats]] | None = None,
                 refresh_seconds: float = 60.0) -> None:
        self._load = load
        self._refresh_seconds = refresh_seconds
        self._stats: dict[str, ModelStats] = {}
        self._loaded_at = -float("inf")
        self._refreshing = False
        self._lock = threading.Lock()

    def view(self) -> Mapping[str, ModelStats]:
        if self._load is not None and not self._refreshing and \
                time.monotonic() - self._loaded_at > self._refresh_seconds:
            self._refreshing = True
            threading.Thread(target=self._refresh, name="routing-stats", daemon=True).start()
        return self._stats

    def note(self, key: str, *, ok: bool, latency_ms: float | None = None, now: float | None = None) -> None:
        """One live outcome of `key` (a model's key) at `now` (monotonic seconds): moves its expectations."""
        now = time.monotonic() if now is None else now
        with self._lock:
            known = self._stats.get(key)
            if known is None:  # nothing known yet: the first answer sets the scale of its latency
                known = ModelStats(latency_ms=latency_ms if ok and latency_ms is not None else PRIOR_LATENCY_MS)
            base_latency = known.base_latency_ms if known.at is not None else known.latency_ms
            base_success = known.base_success if known.at is not None else known.success
            latency, success = known.current(now)
            if ok and latency_ms is not None:
                latency += ALPHA_LATENCY * (latency_ms - latency)
            success += ALPHA_SUCCESS * ((1.0 if ok else 0.0) - success)
            stats = dict(self._stats)
            stats[key] = ModelStats(latency_ms=latency, success=success, samples=known.samples + 1, at=now,
                                    base_latency_ms=base_latency, base_success=base_success)
            self._stats = stats  # readers hold the previous dict: replaced, never changed in place

    def _refresh(self) -> None:
        try:
            self.baseline_set(self._load())
        except Exception:
            logger.warning("routing statistics could not be read from the roll-ups; kept the previous ones",
                           exc_info=True)
        finally:
            self._loaded_at = time.monotonic()
            self._refreshing = False
            connection.close()  # this thread's own connection

    def baseline_set(self, baseline: Mapping[str, ModelStats]) -> None:
        """New baseline figures (the roll-ups'); live figures stay, drifting towards them."""
        with self._lock:
            # Live figures are newer than any roll-up: they stay, drifting towards the new baseline.
            stats = dict(baseline)
            for key, live in self._stats.items():
                if live.at is not None:
                    base = baseline.get(key, ModelStats())
                    stats[key] = ModelStats(live.latency_ms, live.success, live.samples, live.at,
                                            base.latency_ms, base.success)
            self._stats = stats


def rollup_stats() -> dict[str, ModelStats]:
    """Per answering model over the last `ROUTING_STATS_WINDOW_HOURS` hours of hourly roll-ups: median latency and
    success rate. A row answered by several models (a translation's pieces) counts for none of them."""
    from django.utils import timezone

    from usage.histograms import histogram_merge, histogram_percentile
    from usage.models import UsageRollup

    since = timezone.now() - timedelta(hours=settings.LLMHUB["ROUTING_STATS_WINDOW_HOURS"])
    totals: dict[str, list] = {}
    rows = UsageRollup.objects.filter(period=UsageRollup.Period.HOUR, bucket_start__gte=since).exclude(
        answered_model="").values_list("answered_model", "requests", "errors", "latency_histogram")
    for model_id, requests, errors, histogram in rows.iterator():
        if "," in model_id:
            continue
        total = totals.setdefault(model_id, [0, 0, []])
        total[0] += requests
        total[1] += errors
        total[2].append(histogram)
    stats = {}
    for model_id, (requests, errors, histograms) in totals.items():
        if requests:
            latency = histogram_percentile(histogram_merge(*histograms), 0.5)
            stats[model_id] = ModelStats(latency_ms=latency or ModelStats().latency_ms,
                                         success=(requests - errors) / requests, samples=0)
    return stats


_board: StatsBoard | None = None


def stats_board() -> StatsBoard:
    global _board
    if _board is None:
        _board = StatsBoard(load=rollup_stats, refresh_seconds=settings.LLMHUB["ROUTING_STATS_REFRESH_SECONDS"])
    return _board


def stats_view() -> Mapping[str, ModelStats]:
    return stats_board().view()


def stats_note(key: str, *, ok: bool, latency_ms: float | None = None) -> None:
    stats_board().note(key, ok=ok, latency_ms=latency_ms)


def stats_reset() -> None:
    """Forgets every expectation (tests)."""
    global _board
    _board = None
