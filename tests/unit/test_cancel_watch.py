"""``CancelWatch``: the worker's copy of the cancelled ids, refreshed once per batch."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

import pytest

from uno_jobs.store import JobStore, open_store
from uno_jobs.worker._cancels import CancelWatch


class CountingStore:
    """Counts ``cancellations`` calls on a real memory store; can hold them at a gate."""

    def __init__(self) -> None:
        self.inner: JobStore = open_store(f"memory://cancel-watch-{uuid.uuid4().hex}")
        self.calls: list[int | None] = []
        self.fetched = 0
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def cancellations(self, known_version: int | None) -> tuple[int, frozenset[str] | None]:
        self.entered.set()
        self.gate.wait(10)
        self.calls.append(known_version)
        version, ids = self.inner.cancellations(known_version)
        self.fetched += ids is not None
        return version, ids


def check(watch: CancelWatch, store: CountingStore, job_id: str, tag: int) -> bool:
    async def main() -> bool:
        return await watch.is_cancelled(store, job_id, tag)  # type: ignore[arg-type]

    return asyncio.run(main())


def test_one_read_serves_every_delivery_that_arrived_before_it() -> None:
    store, watch = CountingStore(), CancelWatch()
    store.inner.cancel("c", time.time())
    for tag in range(1, 51):
        watch.arrived(tag)
    results = [check(watch, store, f"j{tag}", tag) for tag in range(1, 51)]
    assert not any(results)
    assert check(watch, store, "c", 50) is True
    assert len(store.calls) == 1


def test_a_later_delivery_reads_again_and_only_the_version_while_nothing_changed() -> None:
    store, watch = CountingStore(), CancelWatch()
    watch.arrived(1)
    assert check(watch, store, "a", 1) is False
    watch.arrived(2)
    assert check(watch, store, "a", 2) is False
    assert len(store.calls) == 2 and store.fetched == 1, "the ids came once"
    store.inner.cancel("a", time.time())
    watch.arrived(3)
    assert check(watch, store, "a", 3) is True
    assert store.fetched == 2


def test_concurrent_checks_share_one_read_and_a_delivery_after_it_waits_for_the_next() -> None:
    store, watch = CountingStore(), CancelWatch()

    async def main() -> list[bool]:
        store.gate.clear()
        for tag in (1, 2, 3):
            watch.arrived(tag)
        first = [asyncio.ensure_future(watch.is_cancelled(store, "x", t)) for t in (1, 2, 3)]  # type: ignore[arg-type]
        assert await asyncio.to_thread(store.entered.wait, 10), "the read is in flight"
        store.inner.cancel("x", time.time())  # made after the read began...
        watch.arrived(4)
        late = asyncio.ensure_future(watch.is_cancelled(store, "x", 4))  # type: ignore[arg-type]
        store.gate.set()
        return [*await asyncio.gather(*first), await late]

    # ...so deliveries 1-3 may have missed it, delivery 4 (later) must not.
    assert asyncio.run(main())[3] is True
    assert len(store.calls) == 2


def test_a_failing_read_reaches_every_waiter_and_the_next_check_reads_again() -> None:
    store, watch = CountingStore(), CancelWatch()
    broken = {"down": True}

    def cancellations(known: int | None) -> tuple[int, frozenset[str] | None]:
        if broken["down"]:
            raise ConnectionError("store is down")
        return store.inner.cancellations(known)

    store.cancellations = cancellations  # type: ignore[method-assign]
    watch.arrived(1)
    with pytest.raises(ConnectionError):
        check(watch, store, "a", 1)
    broken["down"] = False
    assert check(watch, store, "a", 1) is False


class LocalStore(CountingStore):
    """A store whose reads are local: ``CancelWatch`` reads it on the event loop."""

    local_reads = True

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[int] = []

    def cancellations(self, known_version: int | None) -> tuple[int, frozenset[str] | None]:
        self.threads.append(threading.get_ident())
        return super().cancellations(known_version)


def test_a_store_with_local_reads_is_read_on_the_event_loop_once_per_arrival() -> None:
    store, watch = LocalStore(), CancelWatch()

    async def main() -> list[bool]:
        loop_thread = threading.get_ident()
        watch.arrived(1)
        first = await watch.is_cancelled(store, "a", 1)  # type: ignore[arg-type]
        store.inner.cancel("b", time.time())  # cancelled before delivery 2 arrives
        watch.arrived(2)
        second = await watch.is_cancelled(store, "b", 2)  # type: ignore[arg-type]
        again = await watch.is_cancelled(store, "a", 2)  # type: ignore[arg-type]
        assert store.threads == [loop_thread, loop_thread]
        return [first, second, again]

    assert asyncio.run(main()) == [False, True, False]
    assert len(store.calls) == 2, "the second read served both checks of delivery 2"


class QuickStore(CountingStore):
    """A store with a bounded read for the event loop (as Redis has) that can give up."""

    def __init__(self) -> None:
        super().__init__()
        self.quick_threads: list[int] = []
        self.give_up = False

    def cancellations_quick(
        self, known_version: int | None
    ) -> tuple[int, frozenset[str] | None] | None:
        self.quick_threads.append(threading.get_ident())
        if self.give_up:
            return None
        return self.inner.cancellations(known_version)

    def cancellations(self, known_version: int | None) -> tuple[int, frozenset[str] | None]:
        self.threads_of_reads.append(threading.get_ident())
        return super().cancellations(known_version)

    threads_of_reads: list[int]


def test_a_quick_read_is_made_on_the_event_loop_and_a_given_up_one_in_a_thread() -> None:
    store, watch = QuickStore(), CancelWatch()
    store.threads_of_reads = []

    async def main() -> list[bool]:
        loop_thread = threading.get_ident()
        watch.arrived(1)
        first = await watch.is_cancelled(store, "a", 1)  # type: ignore[arg-type]
        assert store.quick_threads == [loop_thread] and store.threads_of_reads == []
        store.inner.cancel("b", time.time())  # cancelled before delivery 2 arrives
        store.give_up = True  # Redis too slow: the read goes to a thread, as before
        watch.arrived(2)
        second = await watch.is_cancelled(store, "b", 2)  # type: ignore[arg-type]
        assert len(store.quick_threads) == 2
        assert len(store.threads_of_reads) == 1 and store.threads_of_reads[0] != loop_thread
        store.give_up = False
        store.inner.cancel("c", time.time())
        watch.arrived(3)
        third = await watch.is_cancelled(store, "c", 3)  # type: ignore[arg-type]
        assert store.quick_threads[2] == loop_thread and len(store.threads_of_reads) == 1
        return [first, second, third]

    assert asyncio.run(main()) == [False, True, True]


def test_no_quick_read_while_a_thread_read_is_on_its_way() -> None:
    """Two reads at once could leave the older answer last: a check that comes while a
    thread read is out waits for it instead of reading on the loop."""
    store, watch = QuickStore(), CancelWatch()
    store.threads_of_reads = []
    store.give_up = True

    async def main() -> list[bool]:
        store.gate.clear()  # hold the thread read
        watch.arrived(1)
        first = asyncio.ensure_future(watch.is_cancelled(store, "a", 1))  # type: ignore[arg-type]
        await asyncio.to_thread(store.entered.wait, 10)
        store.give_up = False
        store.inner.cancel("b", time.time())
        watch.arrived(2)
        second = asyncio.ensure_future(watch.is_cancelled(store, "b", 2))  # type: ignore[arg-type]
        await asyncio.sleep(0.05)
        assert len(store.quick_threads) == 1, "no loop read while the thread read is out"
        store.gate.set()
        return [await first, await second]

    assert asyncio.run(main()) == [False, True]


def test_a_delivery_that_saw_the_held_version_needs_no_read() -> None:
    """``seen_version``: the broker's reading when it handed the delivery out."""
    store, watch = CountingStore(), CancelWatch()
    store.inner.cancel("c", time.time())

    async def main() -> list[bool]:
        seen = store.inner.cancellations(None)[0]
        # Nothing held yet: the reading cannot vouch for anything, the store is read.
        answers = [await watch.is_cancelled(store, "c", 1, seen)]  # type: ignore[arg-type]
        assert len(store.calls) == 1
        answers += [
            await watch.is_cancelled(store, job_id, tag, seen)  # type: ignore[arg-type]
            for tag, job_id in enumerate(["c", "a", "c"], start=2)
        ]
        assert len(store.calls) == 1, "the held version: answered from the held ids"
        store.inner.cancel("a", time.time())
        moved = store.inner.cancellations(None)[0]
        answers.append(await watch.is_cancelled(store, "a", 5, moved))  # type: ignore[arg-type]
        assert len(store.calls) == 2, "another version: read"
        return answers

    assert asyncio.run(main()) == [True, True, False, True, True]
