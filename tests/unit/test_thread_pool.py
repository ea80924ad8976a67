"""The executors' thread pool: threads start as calls need them, up to the limit."""

from __future__ import annotations

import asyncio
import threading

from uno_jobs.worker._executors import _DaemonThreadPool


def pool_threads(pool: _DaemonThreadPool) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(f"uno-{pool._name}-")]


def test_no_thread_starts_before_a_call() -> None:
    pool = _DaemonThreadPool(8, "lazy-idle")
    assert pool_threads(pool) == []
    pool.shutdown(wait=True)


def test_calls_one_after_another_share_one_thread() -> None:
    pool = _DaemonThreadPool(8, "lazy-serial")

    async def main() -> set[int]:
        return {await pool.submit(threading.get_ident) for _ in range(20)}

    idents = asyncio.run(main())
    assert len(idents) == 1 and len(pool_threads(pool)) == 1
    pool.shutdown(wait=True)
    assert pool_threads(pool) == []


def test_calls_that_block_together_get_a_thread_each_up_to_the_limit() -> None:
    limit = 4
    pool = _DaemonThreadPool(limit, "lazy-busy")
    release = threading.Event()
    started: list[int] = []
    lock = threading.Lock()

    def hold() -> int:
        with lock:
            started.append(threading.get_ident())
        release.wait(10)
        return threading.get_ident()

    async def main() -> list[int]:
        futures = [pool.submit(hold) for _ in range(limit + 2)]
        for _ in range(200):
            if len(started) == limit:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        assert len(started) == limit, "every thread busy; the rest wait for one"
        assert len(pool_threads(pool)) == limit
        release.set()
        return list(await asyncio.gather(*futures))

    idents = asyncio.run(main())
    assert len(set(idents)) == limit and len(idents) == limit + 2
    pool.shutdown(wait=True)
    assert pool_threads(pool) == []
