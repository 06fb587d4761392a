"""The in-process idempotency store past its sweep size: live keys keep replaying, expired
ones are swept."""

from __future__ import annotations

from services.gateway.idempotency import LocalIdempotencyStore, Outcome, StoredResponse

DONE = StoredResponse(200, {"content-type": "application/json"}, b"{}")


async def test_a_full_store_keeps_its_live_keys_and_drops_the_expired() -> None:
    now = [1000.0]
    store = LocalIdempotencyStore(60, 5, clock=lambda: now[0], sweep_above=4)
    for key in ("old-1", "old-2"):
        assert (await store.begin(key, "f")).outcome is Outcome.STARTED
        await store.finish(key, "f", DONE)
    now[0] += 61  # the old keys' day is over
    for key in ("new-1", "new-2", "new-3", "new-4", "new-5"):  # past 4: a sweep
        assert (await store.begin(key, "f")).outcome is Outcome.STARTED
        await store.finish(key, "f", DONE)
    for key in ("new-1", "new-2", "new-3", "new-4", "new-5"):
        replayed = await store.begin(key, "f")
        assert (replayed.outcome, replayed.stored) == (Outcome.REPLAY, DONE)
    assert (await store.begin("old-1", "other")).outcome is Outcome.STARTED  # forgotten
    assert len(store) == 6  # the five live keys and old-1 again; old-2 was swept


async def test_after_a_sweep_the_next_waits_until_the_store_has_doubled() -> None:
    """A store of live keys does not shrink when swept; sweeping it again on every request
    would copy it every time, so the next sweep comes at twice what the last one kept."""
    now = [1000.0]
    store = LocalIdempotencyStore(60, 5, clock=lambda: now[0], sweep_above=4)
    for n in range(6):  # the sixth finds five, all live: swept, five kept
        await store.begin(f"first-{n}", "f")
        await store.finish(f"first-{n}", "f", DONE)
    assert len(store) == 6
    now[0] += 61  # every key so far has expired
    for n in range(5):  # the store reaches 11 without another sweep (the next comes past 10)
        await store.begin(f"second-{n}", "f")
    assert len(store) == 11
    await store.begin("third", "f")  # past 10: the expired go, the five live stay
    assert len(store) == 6
