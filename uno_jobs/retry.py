"""Retry policies: given a failed attempt, the delay before the next one, or give up.

A policy is a plain object with a pure ``next_delay`` method, so it is unit-tested without
a broker and costs nothing but a call per failure. The built-ins are registered through
the plugin hooks like any third-party policy (``uno_jobs_retry_policies``); a task picks
one with ``@task(retry_policy="exponential")`` or a worker with ``retry_policy=``.

A failed attempt is retried when, in this order (``RetryDecider`` in the worker):

1. the task's ``max_retries`` (default 0: no retries) leaves another attempt;
2. it raised ``Retry(delay=...)``: its delay is used (``None``: the policy's), and
   ``retry_on`` / ``dont_retry_on`` are not consulted;
3. otherwise :func:`is_retryable` holds for the exception: not an instance of the task's
   ``dont_retry_on``, and an instance of ``retry_on`` unless that is ``None`` (every
   failure, time limits included);
4. the policy's ``next_delay`` returns a delay; it may give up early by returning ``None``.

A job whose attempt is not retried ends ``failed`` with a dead-letter entry.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "DEFAULT_RETRY_DELAY",
    "ExponentialBackoff",
    "FixedDelay",
    "RetryContext",
    "RetryPolicy",
    "RetryPolicyFactory",
    "is_retryable",
]

#: Seconds between attempts when neither the task nor the policy says otherwise.
DEFAULT_RETRY_DELAY = 1.0


@dataclass(frozen=True)
class RetryContext:
    """What a policy knows about a failed attempt.

    Attributes:
        attempt: The attempt that just failed (1 for the first run).
        max_retries: The task's ``max_retries``.
        retry_delay: The task's ``retry_delay`` (``None`` when it set none).
        exception: What the attempt raised.
        task: The task name.
    """

    attempt: int
    max_retries: int
    retry_delay: float | None
    exception: BaseException
    task: str


@runtime_checkable
class RetryPolicy(Protocol):
    """Chooses the delay before the next attempt; ``None`` gives up."""

    def next_delay(self, context: RetryContext) -> float | None: ...


#: What a plugin contributes: builds a policy from keyword options.
RetryPolicyFactory = Callable[..., RetryPolicy]


@dataclass(frozen=True)
class FixedDelay:
    """The same delay before every retry: the task's ``retry_delay``, else ``delay``."""

    delay: float = DEFAULT_RETRY_DELAY

    def next_delay(self, context: RetryContext) -> float | None:
        return context.retry_delay if context.retry_delay is not None else self.delay


@dataclass(frozen=True)
class ExponentialBackoff:
    """``base * factor ** (attempt - 1)``, capped at ``cap``, with full jitter.

    The task's ``retry_delay`` (when set) is the base. ``jitter`` spreads retries of many
    jobs that failed together: the delay is drawn uniformly from ``[d * (1 - jitter), d]``.
    """

    base: float = DEFAULT_RETRY_DELAY
    factor: float = 2.0
    cap: float = 3600.0
    jitter: float = 0.5
    rng: Any = field(default=None, repr=False, compare=False)

    def next_delay(self, context: RetryContext) -> float | None:
        base = context.retry_delay if context.retry_delay is not None else self.base
        delay = min(self.cap, base * self.factor ** max(0, context.attempt - 1))
        if self.jitter:
            draw = (self.rng or random).random()
            delay = delay * (1.0 - self.jitter * draw)
        return delay


def is_retryable(
    exc: BaseException,
    retry_on: tuple[type[BaseException], ...] | None,
    dont_retry_on: tuple[type[BaseException], ...],
) -> bool:
    """Whether a task's ``retry_on`` / ``dont_retry_on`` allow retrying ``exc``.

    ``dont_retry_on`` wins; ``retry_on=None`` allows every exception. Matching is by
    ``isinstance``, so a class also matches its subclasses.
    """
    if dont_retry_on and isinstance(exc, dont_retry_on):
        return False
    return retry_on is None or isinstance(exc, retry_on)
