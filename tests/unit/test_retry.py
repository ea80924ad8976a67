"""Retry policies, the retry decision, the Retry / SkipJob signals and the task options
that steer them: all without a broker."""

from __future__ import annotations

import asyncio
import logging
import pickle
import random
from typing import Any

import pytest

from uno_jobs import Retry, SkipJob
from uno_jobs.errors import ConfigurationError
from uno_jobs.message import Message
from uno_jobs.middleware import Middleware, MiddlewareChain, MiddlewareError, job_view
from uno_jobs.retry import ExponentialBackoff, FixedDelay, RetryContext, is_retryable
from uno_jobs.tasks import Task, TaskRegistry, task
from uno_jobs.worker import JobTimeLimitExceeded
from uno_jobs.worker._child import _error_answer
from uno_jobs.worker._outcomes import RetryDecider
from uno_jobs.worker._process import rebuild_exception


def context(attempt: int, retry_delay: float | None = None) -> RetryContext:
    return RetryContext(attempt, 10, retry_delay, ValueError("x"), "t")


def make_task(**options: Any) -> Task[..., Any]:
    def work() -> None: ...

    return task(name="reports.monthly", registry=TaskRegistry(), **options)(work)


def attempt(number: int) -> Message:
    return Message("job-1", "reports.monthly", [], {}, "q", retries=number - 1)


# -- policies --------------------------------------------------------------------------------


def test_fixed_delay_prefers_the_tasks_retry_delay() -> None:
    assert FixedDelay(7).next_delay(context(1)) == 7
    assert FixedDelay(7).next_delay(context(4, retry_delay=2.5)) == 2.5
    assert FixedDelay().next_delay(context(1, retry_delay=0)) == 0


def test_exponential_backoff_doubles_up_to_the_cap() -> None:
    policy = ExponentialBackoff(base=1, factor=2, cap=10, jitter=0)
    assert [policy.next_delay(context(n)) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]
    assert policy.next_delay(context(2, retry_delay=3)) == 6, "the task's retry_delay is the base"
    assert policy.next_delay(context(3, retry_delay=3)) == 10, "3 * 4, capped at 10"


def test_exponential_backoff_jitter_stays_within_its_band() -> None:
    policy = ExponentialBackoff(base=4, factor=2, cap=100, jitter=0.5, rng=random.Random(5))
    delays = [policy.next_delay(context(2)) for _ in range(200)]
    assert all(d is not None and 4.0 <= d <= 8.0 for d in delays)
    assert len(set(delays)) > 100, "jitter spreads the delays"


# -- retry_on / dont_retry_on ----------------------------------------------------------------


def test_is_retryable_matches_by_isinstance_and_dont_wins() -> None:
    assert is_retryable(ValueError(), None, ())
    assert is_retryable(JobTimeLimitExceeded(1), None, ()), "None retries time limits too"
    assert is_retryable(ConnectionResetError(), (ConnectionError,), ())
    assert not is_retryable(ValueError(), (ConnectionError,), ())
    assert not is_retryable(ConnectionRefusedError(), (ConnectionError,), (ConnectionRefusedError,))
    assert not is_retryable(KeyError(), None, (LookupError,))


def test_task_options_are_normalised() -> None:
    only = make_task(retry_on=ConnectionError, dont_retry_on=[ValueError, ValueError])
    assert only.retry_on == (ConnectionError,)
    assert only.dont_retry_on == (ValueError,)
    plain = make_task()
    assert (plain.retry_on, plain.dont_retry_on) == (None, ())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"retry_on": "ValueError"}, r"retry_on='ValueError' for task 'reports\.monthly'"),
        ({"retry_on": (ValueError, int)}, r"retry_on for task 'reports\.monthly'.*int"),
        ({"retry_on": ValueError()}, r"retry_on=ValueError\(\) for task"),
        ({"dont_retry_on": None}, r"dont_retry_on=None for task 'reports\.monthly'"),
        ({"dont_retry_on": [object]}, r"dont_retry_on for task .*'object'.* not an exception"),
        ({"retry_on": ()}, r"retry_on=\(\) for task 'reports\.monthly'.*max_retries=0"),
        (
            {"retry_on": (ValueError, OSError), "dont_retry_on": OSError},
            r"task 'reports\.monthly': OSError is in both retry_on and dont_retry_on",
        ),
    ],
)
def test_bad_retry_filters_are_refused_naming_task_and_option(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        make_task(**options)


# -- the decision ------------------------------------------------------------------------------


def test_max_retries_bounds_every_failure() -> None:
    decider = RetryDecider(FixedDelay(3))
    two = make_task(max_retries=2)
    assert decider.decide(two, attempt(1), ValueError()).delay == 3
    assert decider.decide(two, attempt(2), ValueError()).delay == 3
    final = decider.decide(two, attempt(3), ValueError())
    assert (final.delay, final.why) == (None, "no retries left (max_retries=2)")
    default = decider.decide(make_task(), attempt(1), Retry(delay=5))
    assert default.delay is None
    assert default.why == "no retries allowed (max_retries=0)"


def test_retry_signal_overrides_the_delay_and_the_filters() -> None:
    decider = RetryDecider(FixedDelay(60))
    strict = make_task(max_retries=1, retry_on=(ConnectionError,), dont_retry_on=(Retry,))
    assert decider.decide(strict, attempt(1), Retry(delay=0.5)).delay == 0.5
    assert decider.decide(strict, attempt(1), Retry()).delay == 60, "None: the policy's"
    assert decider.decide(strict, attempt(2), Retry(delay=0)).delay is None


def test_filters_are_decided_before_the_policy_is_asked() -> None:
    asked: list[RetryContext] = []

    class Spy:
        def next_delay(self, ctx: RetryContext) -> float | None:
            asked.append(ctx)
            return 1.0

    decider = RetryDecider(Spy())
    filtered = make_task(
        max_retries=3, retry_on=(ConnectionError,), dont_retry_on=(ConnectionRefusedError,)
    )
    refused = decider.decide(filtered, attempt(1), ConnectionRefusedError())
    assert refused.delay is None
    assert refused.why == "ConnectionRefusedError is in the task's dont_retry_on"
    other = decider.decide(filtered, attempt(1), KeyError("k"))
    assert (other.delay, other.why) == (None, "KeyError is not in the task's retry_on")
    assert asked == []
    assert decider.decide(filtered, attempt(1), ConnectionResetError()).delay == 1.0
    assert [type(c.exception) for c in asked] == [ConnectionResetError]


def test_time_limits_go_through_the_same_policy() -> None:
    decider = RetryDecider(FixedDelay(2))
    timed = make_task(max_retries=1, timeout=5)
    assert decider.decide(timed, attempt(1), JobTimeLimitExceeded(5)).delay == 2
    assert decider.decide(timed, attempt(2), JobTimeLimitExceeded(5)).delay is None
    never = make_task(max_retries=1, dont_retry_on=JobTimeLimitExceeded)
    assert decider.decide(never, attempt(1), JobTimeLimitExceeded(5)).delay is None


def test_a_middleware_error_is_matched_by_what_the_middleware_raised() -> None:
    decider = RetryDecider(FixedDelay(0))
    flaky_gate = make_task(max_retries=1, retry_on=(ConnectionError,))
    cause = ConnectionResetError("gate unreachable")
    wrapped = MiddlewareError(Middleware(), cause)
    wrapped.__cause__ = cause
    assert decider.decide(flaky_gate, attempt(1), wrapped).delay == 0
    other = MiddlewareError(Middleware(), PermissionError())
    other.__cause__ = PermissionError()
    assert decider.decide(flaky_gate, attempt(1), other).delay is None


def test_a_policy_that_gives_up_or_raises_ends_the_job(caplog: pytest.LogCaptureFixture) -> None:
    class GiveUp:
        def next_delay(self, ctx: RetryContext) -> float | None:
            return None

    class Broken:
        def next_delay(self, ctx: RetryContext) -> float | None:
            raise ZeroDivisionError

    retried = make_task(max_retries=5)
    assert RetryDecider(GiveUp()).decide(retried, attempt(1), ValueError()).why == (
        "the retry policy GiveUp gave up"
    )
    with caplog.at_level(logging.ERROR, logger="uno_jobs.worker"):
        broken = RetryDecider(Broken()).decide(retried, attempt(1), ValueError())
    assert (broken.delay, broken.why) == (None, "the retry policy raised ZeroDivisionError")
    assert "job job-1 is not retried" in caplog.text


# -- the signals -------------------------------------------------------------------------------


def test_retry_keeps_its_delay_through_pickle_and_the_process_pipe() -> None:
    again = pickle.loads(pickle.dumps(Retry(delay=2.5, reason="rate limited")))
    assert (type(again), again.delay, again.reason) == (Retry, 2.5, "rate limited")
    assert str(again) == "retry requested in 2.5 s: rate limited"
    try:
        raise Retry(delay=4)
    except Retry as exc:
        answer = _error_answer(exc, 0)
    rebuilt = rebuild_exception(answer)
    assert isinstance(rebuilt, Retry) and rebuilt.delay == 4.0
    assert str(Retry()) == "retry requested with the retry policy's delay"
    skip = pickle.loads(pickle.dumps(SkipJob("maintenance")))
    assert (type(skip), skip.reason) == (SkipJob, "maintenance")


@pytest.mark.parametrize("delay", [-1, float("nan"), float("inf"), "5", True])
def test_retry_refuses_a_bad_delay(delay: Any) -> None:
    with pytest.raises(ValueError, match=r"Retry\(delay="):
        Retry(delay=delay)


def test_signals_are_exported_where_users_look() -> None:
    import uno_jobs
    import uno_jobs.middleware

    assert uno_jobs.Retry is uno_jobs.middleware.Retry is Retry
    assert uno_jobs.SkipJob is uno_jobs.middleware.SkipJob is SkipJob
    assert {"Retry", "SkipJob"} <= set(uno_jobs.__all__) & set(uno_jobs.middleware.__all__)


# -- middleware chain ---------------------------------------------------------------------


class Logged(Middleware):
    def __init__(self, name: str, calls: list[str], raises: BaseException | None = None) -> None:
        self.name, self.calls, self.raises = name, calls, raises

    async def before_execution(self, job: Any, task_func: Any) -> None:
        self.calls.append(f"before {self.name}")
        if self.raises is not None:
            raise self.raises

    async def after_execution(self, job: Any, task_func: Any, result: Any) -> Any:
        self.calls.append(f"after {self.name}")
        if self.raises is not None:
            raise self.raises
        return result


class Gate(Logged):
    """A second class name, so the chain's naming can be checked."""


VIEW = job_view({"id": "j", "task": "t"})


def test_skip_job_names_its_middleware_and_stops_later_hooks() -> None:
    calls: list[str] = []
    chain = MiddlewareChain(
        [Logged("a", calls), Gate("b", calls, SkipJob("closed")), Logged("c", calls)]
    )
    with pytest.raises(SkipJob) as info:
        asyncio.run(chain.before_execution(VIEW, print))
    assert (info.value.middleware, info.value.reason) == ("Gate", "closed")
    assert calls == ["before a", "before b"]


def test_retry_passes_through_both_hooks_unwrapped() -> None:
    calls: list[str] = []
    chain = MiddlewareChain([Logged("a", calls), Gate("b", calls, Retry(delay=1))])
    with pytest.raises(Retry):
        asyncio.run(chain.before_execution(VIEW, print))
    calls.clear()
    with pytest.raises(Retry):
        asyncio.run(chain.after_execution(VIEW, print, 1))
    assert calls == ["after b"], "after-hooks run in reverse; a Retry stops the rest"


def test_other_exceptions_fail_before_and_are_logged_after(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[str] = []
    chain = MiddlewareChain([Logged("a", calls), Gate("b", calls, KeyError("k"))])
    with pytest.raises(MiddlewareError, match=r"middleware Gate\.before_execution raised KeyError"):
        asyncio.run(chain.before_execution(VIEW, print))
    calls.clear()
    with caplog.at_level(logging.ERROR, logger="uno_jobs.middleware"):
        assert asyncio.run(chain.after_execution(VIEW, print, 42)) == 42
    assert calls == ["after b", "after a"]
    assert "Gate.after_execution raised; outcome unchanged" in caplog.text
    skip_late = MiddlewareChain([Gate("s", calls, SkipJob("too late"))])
    assert asyncio.run(skip_late.after_execution(VIEW, print, 7)) == 7, "SkipJob counts before only"
