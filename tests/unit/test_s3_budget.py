"""The S3 destination's part budget (job.s3.budget): bytes held by all files together, each file's share."""

from __future__ import annotations

import asyncio

import pytest

from job.s3.budget import ByteBudget, PartSlots


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_takes_what_fits_and_waits_in_arrival_order() -> None:
    budget = ByteBudget(10)
    assert await budget.acquire(6) == 6
    order: list[str] = []

    async def take(name: str, size: int) -> None:
        await budget.acquire(size)
        order.append(name)

    big = asyncio.create_task(take("big", 8))
    await settle()
    small = asyncio.create_task(take("small", 1))  # would fit now, but waits behind "big": no starvation
    await settle()
    assert order == [] and budget.held == 6
    budget.release(6)
    await settle()
    assert order == ["big", "small"] and budget.held == 9
    await asyncio.gather(big, small)


async def test_a_request_larger_than_the_budget_runs_alone() -> None:
    budget = ByteBudget(10)
    await budget.acquire(1)
    task = asyncio.create_task(budget.acquire(50))
    await settle()
    assert not task.done()
    budget.release(1)
    assert await task == 10 and budget.held == 10


async def test_a_cancelled_waiter_lets_the_next_in_and_keeps_nothing() -> None:
    budget = ByteBudget(10)
    await budget.acquire(5)
    blocked = asyncio.create_task(budget.acquire(8))
    behind = asyncio.create_task(budget.acquire(3))
    await settle()
    assert not behind.done()  # 3 would fit, but arrival order holds it behind 8
    blocked.cancel()
    await settle()
    assert blocked.cancelled() and await behind == 3 and budget.held == 8


async def test_granted_then_cancelled_gives_it_back() -> None:
    budget = ByteBudget(10)
    await budget.acquire(10)
    waiter = asyncio.create_task(budget.acquire(4))
    await settle()
    budget.release(10)  # grants the waiter (held 4) ...
    waiter.cancel()  # ... which is cancelled before it runs again
    await settle()
    assert waiter.cancelled() and budget.held == 0


async def test_releasing_more_than_lent_is_a_bug() -> None:
    with pytest.raises(AssertionError):
        ByteBudget(10).release(1)
    with pytest.raises(ValueError):
        ByteBudget(0)


async def test_part_slots_cap_a_file_and_close_gives_back_what_it_holds() -> None:
    budget = ByteBudget(100)
    one, other = PartSlots(budget, per_file=2), PartSlots(budget, per_file=2)
    a = await one.acquire(10)
    await one.acquire(10)
    third = asyncio.create_task(one.acquire(10))  # the file's own cap, though the budget has room
    await settle()
    assert not third.done() and await other.acquire(30) == 30 and budget.held == 50
    one.release(a)
    assert await third == 10 and budget.held == 50
    one.close()  # a failed upload: the parts it still held are the budget's again
    assert budget.held == 30
    one.release(10)  # a part task finishing after close(): not given back twice
    assert budget.held == 30
    other.close()
    assert budget.held == 0
