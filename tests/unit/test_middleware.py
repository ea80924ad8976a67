"""``MiddlewareChain``: onion order, sync and async hooks, and what a raising hook does."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest

from uno_jobs.middleware import Middleware, MiddlewareChain, MiddlewareError, job_view

JOB: dict[str, Any] = {
    "id": "job-1",
    "task": "t",
    "args": (1,),
    "kwargs": {},
    "queue": "q",
    "priority": "normal",
    "attempt": 1,
    "enqueued_at": 0.0,
    "headers": {},
    "worker_id": "w",
}


def func() -> None:
    """The task function handed to the hooks."""


def run(coro: Any) -> Any:
    return asyncio.run(coro)


class Recording(Middleware):
    """Appends ``(hook, name)`` to a shared log from async hooks."""

    def __init__(self, name: str, log: list[tuple[str, str]]) -> None:
        self.name = name
        self.log = log

    async def before_enqueue(self, job: Any) -> None:
        self.log.append(("before_enqueue", self.name))

    async def after_enqueue(self, job: Any) -> None:
        self.log.append(("after_enqueue", self.name))

    async def before_execution(self, job: Any, task_func: Callable[..., Any]) -> None:
        assert task_func is func
        self.log.append(("before", self.name))

    async def after_execution(self, job: Any, task_func: Callable[..., Any], result: Any) -> Any:
        self.log.append(("after", self.name))
        return result

    async def on_error(self, job: Any, task_func: Callable[..., Any], exc: BaseException) -> None:
        self.log.append(("on_error", self.name))


class SyncRecording(Middleware):
    """The same, with plain ``def`` overrides (allowed by DESIGN.md §1)."""

    def __init__(self, name: str, log: list[tuple[str, str]]) -> None:
        self.name = name
        self.log = log

    def before_execution(self, job: Any, task_func: Callable[..., Any]) -> None:  # type: ignore[override]
        self.log.append(("before", self.name))

    def after_execution(self, job: Any, task_func: Callable[..., Any], result: Any) -> Any:
        self.log.append(("after", self.name))
        return result

    def on_error(self, job: Any, task_func: Callable[..., Any], exc: BaseException) -> None:  # type: ignore[override]
        self.log.append(("on_error", self.name))


def test_before_in_order_after_and_on_error_reversed() -> None:
    log: list[tuple[str, str]] = []
    chain = MiddlewareChain([Recording("A", log), Recording("B", log), Recording("C", log)])
    view = job_view(dict(JOB))

    async def main() -> None:
        await chain.before_execution(view, func)
        await chain.after_execution(view, func, 1)
        await chain.on_error(view, func, ValueError("x"))
        await chain.before_enqueue(view)
        await chain.after_enqueue(view)

    run(main())
    assert log == [
        ("before", "A"),
        ("before", "B"),
        ("before", "C"),
        ("after", "C"),
        ("after", "B"),
        ("after", "A"),
        ("on_error", "C"),
        ("on_error", "B"),
        ("on_error", "A"),
        ("before_enqueue", "A"),
        ("before_enqueue", "B"),
        ("before_enqueue", "C"),
        ("after_enqueue", "C"),
        ("after_enqueue", "B"),
        ("after_enqueue", "A"),
    ]


def test_sync_and_async_overrides_mix_in_one_chain() -> None:
    log: list[tuple[str, str]] = []
    chain = MiddlewareChain([SyncRecording("S", log), Recording("A", log)])
    view = job_view(dict(JOB))

    async def main() -> Any:
        await chain.before_execution(view, func)
        result = await chain.after_execution(view, func, "r")
        await chain.on_error(view, func, ValueError("x"))
        return result

    assert run(main()) == "r"
    assert log == [
        ("before", "S"),
        ("before", "A"),
        ("after", "A"),
        ("after", "S"),
        ("on_error", "A"),
        ("on_error", "S"),
    ]


def test_base_class_hooks_change_nothing() -> None:
    chain = MiddlewareChain([Middleware(), Middleware()])
    view = job_view(dict(JOB))

    async def main() -> Any:
        await chain.before_execution(view, func)
        await chain.on_error(view, func, ValueError("x"))
        return await chain.after_execution(view, func, {"k": [1, 2]})

    assert run(main()) == {"k": [1, 2]}


def test_after_execution_result_replaces_the_result_through_the_chain() -> None:
    seen: list[tuple[str, Any]] = []

    class Add(Middleware):
        def __init__(self, name: str, amount: int) -> None:
            self.name = name
            self.amount = amount

        async def after_execution(self, job: Any, task_func: Any, result: Any) -> Any:
            seen.append((self.name, result))
            return result + self.amount

    class Double(Middleware):
        def after_execution(self, job: Any, task_func: Any, result: Any) -> Any:
            seen.append(("double", result))
            return result * 2

    # Reverse order: Double (inner) first, then B, then A (outer).
    chain = MiddlewareChain([Add("A", 100), Add("B", 10), Double()])
    result = run(chain.after_execution(job_view(dict(JOB)), func, 1))
    assert seen == [("double", 1), ("B", 2), ("A", 12)]
    assert result == 112


def test_raising_before_execution_raises_middleware_error_naming_the_class() -> None:
    log: list[tuple[str, str]] = []

    class Gatekeeper(Middleware):
        async def before_execution(self, job: Any, task_func: Any) -> None:
            raise PermissionError("not today")

    chain = MiddlewareChain([Recording("A", log), Gatekeeper(), Recording("C", log)])
    with pytest.raises(MiddlewareError) as info:
        run(chain.before_execution(job_view(dict(JOB)), func))
    assert info.value.middleware == "Gatekeeper"
    assert "Gatekeeper" in str(info.value)
    assert "PermissionError: not today" in str(info.value)
    assert isinstance(info.value.__cause__, PermissionError)
    assert log == [("before", "A")], "hooks after the raising one do not run"


def test_raising_sync_before_execution_is_wrapped_too() -> None:
    class SyncGate(Middleware):
        def before_execution(self, job: Any, task_func: Any) -> None:  # type: ignore[override]
            raise KeyError("nope")

    with pytest.raises(MiddlewareError, match="SyncGate"):
        run(MiddlewareChain([SyncGate()]).before_execution(job_view(dict(JOB)), func))


def test_raising_after_execution_is_logged_and_outcome_unchanged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log: list[tuple[str, str]] = []

    class Broken(Middleware):
        async def after_execution(self, job: Any, task_func: Any, result: Any) -> Any:
            raise RuntimeError("after broke")

    chain = MiddlewareChain([Recording("A", log), Broken()])
    with caplog.at_level(logging.ERROR, logger="uno_jobs.middleware"):
        result = run(chain.after_execution(job_view(dict(JOB)), func, 41))
    assert result == 41, "the result passes on unchanged"
    assert log == [("after", "A")], "the outer middleware still runs"
    records = [r for r in caplog.records if r.name == "uno_jobs.middleware"]
    assert len(records) == 1
    assert "Broken.after_execution" in records[0].getMessage()
    assert records[0].exc_info is not None and "after broke" in str(records[0].exc_info[1])
    assert getattr(records[0], "job_id", None) == "job-1"


def test_raising_on_error_is_logged_and_does_not_propagate(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log: list[tuple[str, str]] = []

    class Broken(Middleware):
        def on_error(self, job: Any, task_func: Any, exception: BaseException) -> None:  # type: ignore[override]
            raise RuntimeError("on_error broke")

    chain = MiddlewareChain([Recording("A", log), Broken()])
    with caplog.at_level(logging.ERROR, logger="uno_jobs.middleware"):
        run(chain.on_error(job_view(dict(JOB)), func, ValueError("task failed")))
    assert log == [("on_error", "A")]
    messages = [r.getMessage() for r in caplog.records if r.name == "uno_jobs.middleware"]
    assert messages == ["middleware Broken.on_error raised; outcome unchanged"]


def test_raising_after_enqueue_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(Middleware):
        async def after_enqueue(self, job: Any) -> None:
            raise RuntimeError("x")

    with caplog.at_level(logging.ERROR, logger="uno_jobs.middleware"):
        run(MiddlewareChain([Broken()]).after_enqueue(job_view(dict(JOB))))
    assert any("Broken.after_enqueue" in r.getMessage() for r in caplog.records)


def test_on_error_receives_the_exception() -> None:
    got: list[BaseException] = []

    class Catch(Middleware):
        async def on_error(self, job: Any, task_func: Any, exception: BaseException) -> None:
            got.append(exception)

    error = ValueError("boom")
    run(MiddlewareChain([Catch()]).on_error(job_view(dict(JOB)), func, error))
    assert got == [error]


def test_empty_chain_is_falsy_and_a_full_one_truthy() -> None:
    assert not MiddlewareChain()
    assert not MiddlewareChain([])
    assert MiddlewareChain([Middleware()])


def test_chain_keeps_its_own_copy_of_the_list() -> None:
    given: list[Middleware] = []
    chain = MiddlewareChain(given)
    given.append(Middleware())
    assert not chain


def test_job_view_is_read_only() -> None:
    fields = dict(JOB)
    view = job_view(fields)
    assert view["id"] == "job-1"
    assert set(view) == set(JOB)
    with pytest.raises(TypeError):
        view["id"] = "other"  # type: ignore[index]
    with pytest.raises(TypeError):
        del view["id"]  # type: ignore[attr-defined]
    assert not hasattr(view, "update")
