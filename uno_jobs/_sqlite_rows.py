"""Many rows into an SQLite table in few ``INSERT`` statements.

``executemany`` runs its statement once per row. One ``INSERT ... VALUES (...), (...)``
of many rows costs half as much per row here for the embedded broker's messages (each
run of a statement also updates an ``AUTOINCREMENT`` table's counter) and a tenth less
for the store's records: the bulk enqueue's two inserts of every job.
"""

from __future__ import annotations

import functools
import itertools
import sqlite3
from collections.abc import Sequence
from typing import Any

__all__ = ["insert_rows"]

#: The most parameters one statement may have in SQLite before 3.32 (999; 32,766 since):
#: a Python may be linked to an older library than the one it was tested with.
MAX_PARAMETERS = 999


@functools.lru_cache(maxsize=64)
def _statement(head: str, width: int, count: int) -> str:
    row = "(" + ",".join("?" * width) + ")"
    return f"{head} VALUES {','.join([row] * count)}"


def insert_rows(
    conn: sqlite3.Connection, head: str, rows: Sequence[Sequence[Any]], width: int
) -> int:
    """Insert ``rows`` of ``width`` values each, in their order, by ``head`` (``"INSERT
    INTO t (a, b)"``, or ``INSERT OR IGNORE``, without ``VALUES``) in as few statements
    as the parameter limit allows. Returns how many rows were inserted. Not a
    transaction of its own: the caller's, or one per statement."""
    per_statement = max(1, MAX_PARAMETERS // width)
    inserted = 0
    for start in range(0, len(rows), per_statement):
        part = rows[start : start + per_statement]
        values = list(itertools.chain.from_iterable(part))
        inserted += conn.execute(_statement(head, width, len(part)), values).rowcount
    return inserted
