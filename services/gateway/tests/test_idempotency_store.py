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
