"""Merging a Redis publish batch's adjacent pushes (``uno_jobs/broker/_redis_publish.py``)."""

from __future__ import annotations

from uno_jobs.broker import _redis_publish
from uno_jobs.broker._redis_publish import _merge_pushes


def test_adjacent_pushes_to_one_list_become_one_push_in_their_order() -> None:
    commands = [
        ("lpush", ("q", "a")),
        ("lpush", ("q", "b")),
        ("lpush", ("q.low", "c")),
        ("lpush", ("q", "d")),
        ("pexpire", ("q", 100)),
        ("lpush", ("q", "e")),
        ("lpush", ("q", "f")),
        ("publish", ("/0.topic", "g")),
    ]
    assert _merge_pushes(commands) == [
        ("lpush", ("q", "a", "b")),
        ("lpush", ("q.low", "c")),
        ("lpush", ("q", "d")),
        ("pexpire", ("q", 100)),
        ("lpush", ("q", "e", "f")),
        ("publish", ("/0.topic", "g")),
    ]


def test_a_merged_push_carries_at_most_the_cap() -> None:
    cap = _redis_publish._MAX_PUSH_VALUES
    commands = [("lpush", ("q", str(n))) for n in range(cap * 2 + 1)]
    merged = _merge_pushes(commands)
    assert [len(args) - 1 for _, args in merged] == [cap, cap, 1]
    assert [v for _, args in merged for v in args[1:]] == [str(n) for n in range(cap * 2 + 1)]
