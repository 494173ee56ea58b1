"""The quota seam of the request pipeline: reserve before the upstream call, settle after it.

Quotas are not enforced yet: a reservation always succeeds. Exact quotas (one atomic step in Redis or
a conditional UPDATE) replace these two functions without reshaping the pipeline.
"""

from dataclasses import dataclass


@dataclass(slots=True)
class Reservation:
    user_id: int | None
    model_id: str
    tokens: int


async def quota_reserve(*, user_id: int | None, model_id: str, tokens: int) -> Reservation:
    return Reservation(user_id=user_id, model_id=model_id, tokens=tokens)


async def quota_settle(*, reservation: Reservation, used_tokens: int) -> None:
    return None
