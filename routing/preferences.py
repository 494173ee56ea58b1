"""The learned-preference policy's input: each user's feedback per task type, as Beta counts per model."""

from feedback.selectors import preference_counts as _feedback_counts


def preference_counts(user_id: int | None, task: str) -> dict[str, tuple[int, int]]:
    """model id -> (successes, failures) of `user_id`'s feedback on requests of `task`: thumbs up count as
    successes; thumbs down, and implicit signals against (an immediate retry or regeneration), as failures.

    From the feedback app's per-user snapshot in memory (no I/O; refreshed in the background): empty when nothing
    is recorded (the bandit then explores from its uniform prior)."""
    if user_id is None:
        return {}
    return _feedback_counts(user_id, task)
