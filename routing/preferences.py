"""The learned-preference policy's input: each user's feedback per task type, as Beta counts per model."""


def preference_counts(user_id: int | None, task: str) -> dict[str, tuple[int, int]]:
    """model id -> (successes, failures) of `user_id`'s feedback on requests of `task`: thumbs up count as
    successes; thumbs down, and implicit signals against (an immediate retry or regeneration), as failures.

    Empty when nothing is recorded (the bandit then explores from its uniform prior). The feedback app
    (`POST /api/feedback/`) owns the table this reads; until it is wired here there is nothing to read.
    Called off the event loop, only for tiers whose policy (or shadow policy) is "preference"."""
    return {}
