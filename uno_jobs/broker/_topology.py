"""Queue topology, the same on every broker (DESIGN.md §2).

A logical queue ``q`` is one broker queue per priority level: ``q`` itself carries
``normal`` and is declared exactly as Celery declares it (a durable direct exchange named
``q``, a durable queue ``q`` bound with routing key ``q``, no queue arguments), so Celery
producers and workers keep working on it. ``q.critical``, ``q.high`` and ``q.low`` carry
the other levels, and ``q.dead`` holds dead letters.
"""

from __future__ import annotations

from collections.abc import Sequence

from kombu.entity import Exchange
from kombu.entity import Queue as KombuQueue

from uno_jobs.errors import ConfigurationError
from uno_jobs.message import PRIORITY_LEVELS

__all__ = ["dead_queue_name", "kombu_queue", "level_queue_name", "level_queues"]


def level_queue_name(queue: str, level: str) -> str:
    """The broker queue that carries ``level`` jobs of ``queue``."""
    return queue if level == "normal" else f"{queue}.{level}"


def dead_queue_name(queue: str) -> str:
    return f"{queue}.dead"


def level_queues(queue: str, levels: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """``(broker queue name, level)`` pairs in start order (critical first)."""
    wanted = PRIORITY_LEVELS if levels is None else tuple(levels)
    for level in wanted:
        if level not in PRIORITY_LEVELS:
            raise ConfigurationError(
                f"priority_levels: unknown level {level!r} (allowed: {', '.join(PRIORITY_LEVELS)})"
            )
    return [(level_queue_name(queue, lv), lv) for lv in PRIORITY_LEVELS if lv in wanted]


def kombu_queue(name: str) -> KombuQueue:
    """The kombu declaration of one broker queue, identical to Celery's default."""
    return KombuQueue(
        name,
        Exchange(name, type="direct", durable=True),
        routing_key=name,
        durable=True,
    )
