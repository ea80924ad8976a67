"""Job outcomes written in Celery's Redis result-backend format (optional).

A worker given ``celery_results_url="redis://host:6379/1"`` writes, beside its own job
store, each outcome as Celery's ``RedisBackend`` would: the JSON document
``{"status", "result", "traceback", "children", "date_done", "task_id"}`` under the key
``celery-task-meta-<job id>`` (expiring after ``result_expires``, one day by default),
published on the channel of the same name. So ``AsyncResult(job_id).get()`` in a Celery
application whose ``result_backend`` is that Redis returns the uno_jobs job's result, or
raises its error: a queue can move to uno_jobs while its callers still wait the Celery way.

What is written, by job status:

- ``succeeded`` → ``SUCCESS`` with the result (``None`` if it is not JSON);
- ``failed`` and ``dead`` → ``FAILURE`` with the error as Celery serialises exceptions
  (``exc_type``, ``exc_message``, ``exc_module``: ``builtins`` for a built-in exception
  type, otherwise none, so Celery raises an exception class of that name it makes up);
- ``retrying`` and ``scheduled`` after a failed attempt → ``RETRY`` (``get()`` keeps
  waiting, as it does for Celery's own retries).

The URL's query may carry ``key_prefix`` (Celery's ``global_keyprefix`` of
``result_backend_transport_options``, with the ``_`` Celery appends when the prefix does
not end in ``:_-.``) and ``expires`` (seconds, Celery's ``result_expires``).

The worker's recorder calls :meth:`CeleryResults.write` after the store write and before
the ack, so a result that cannot be written leaves its message unacknowledged.
"""

from __future__ import annotations

import builtins
import json
import logging
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import redis

from uno_jobs.config import redact_url
from uno_jobs.errors import ConfigurationError
from uno_jobs.store import JobStatus, JobUpdate

__all__ = ["CeleryResults", "celery_meta"]

log = logging.getLogger("uno_jobs.celery_results")

#: Celery's ``result_expires`` default.
DEFAULT_EXPIRES_SECONDS = 86_400
_TASK_KEYPREFIX = "celery-task-meta-"
_SOCKET_TIMEOUT_SECONDS = 5.0
_FAILED = (JobStatus.FAILED, JobStatus.DEAD)
_RETRYING = (JobStatus.RETRYING, JobStatus.SCHEDULED)


def _exception(fields: dict[str, Any]) -> dict[str, Any]:
    """An error as Celery's JSON result serialiser writes an exception."""
    exc_type = fields.get("error_type")
    message = fields.get("error_message") or ""
    if not exc_type:
        # Dead without running (expired, cancelled, unknown task): name the reason.
        exc_type = "JobDeadLettered"
        reason = fields.get("dead_reason")
        message = f"{reason}: {message}" if reason else message
    builtin = getattr(builtins, str(exc_type), None)
    is_builtin = isinstance(builtin, type) and issubclass(builtin, BaseException)
    return {
        "exc_type": str(exc_type),
        "exc_message": [str(message)],
        "exc_module": "builtins" if is_builtin else None,
    }


def celery_meta(job_id: str, fields: dict[str, Any]) -> dict[str, Any] | None:
    """The Celery result document for a job update, or ``None`` if Celery has no state
    for it (running, queued, a delay that is no retry)."""
    status = fields.get("status")
    if status == JobStatus.SUCCEEDED:
        state, result, traceback = "SUCCESS", fields.get("result"), None
    elif status in _FAILED:
        state, result, traceback = "FAILURE", _exception(fields), fields.get("error_traceback")
    elif status in _RETRYING and fields.get("error_type"):
        state, result, traceback = "RETRY", _exception(fields), fields.get("error_traceback")
    else:
        return None
    done = datetime.now(timezone.utc).isoformat() if state != "RETRY" else None
    return {
        "status": state,
        "result": result,
        "traceback": traceback,
        "children": [],
        "date_done": done,
        "task_id": job_id,
    }


def _dumps(meta: dict[str, Any]) -> str:
    try:
        return json.dumps(meta, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        # The store records such a result as truncated; Celery gets None the same way.
        return json.dumps({**meta, "result": None}, separators=(",", ":"))


class CeleryResults:
    """Writes job outcomes where a Celery ``RedisBackend`` reads them.

    Args:
        url: ``redis://`` or ``rediss://`` URL of the Celery result backend, optionally
            with ``key_prefix`` and ``expires`` in its query.

    Raises:
        ConfigurationError: Another scheme, an unknown query option or a bad ``expires``.
    """

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.display = redact_url(url)
        if parts.scheme not in ("redis", "rediss"):
            raise ConfigurationError(
                f"celery_results_url {self.display!r}: expected a redis:// or rediss:// URL"
            )
        options = dict(parse_qsl(parts.query))
        unknown = sorted(set(options) - {"key_prefix", "expires"})
        if unknown:
            raise ConfigurationError(
                f"celery_results_url {self.display!r}: unknown option(s) {', '.join(unknown)} "
                "(allowed: key_prefix, expires)"
            )
        prefix = options.get("key_prefix", "")
        if prefix and prefix[-1] not in ":_-.":
            prefix += "_"
        self.key_prefix = prefix + _TASK_KEYPREFIX
        try:
            self.expires_seconds = int(options.get("expires", DEFAULT_EXPIRES_SECONDS))
        except ValueError:
            raise ConfigurationError(
                f"celery_results_url {self.display!r}: expires must be whole seconds"
            ) from None
        if self.expires_seconds <= 0:
            raise ConfigurationError(
                f"celery_results_url {self.display!r}: expires must be positive"
            )
        self._client: redis.Redis = redis.Redis.from_url(
            urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")),
            socket_connect_timeout=_SOCKET_TIMEOUT_SECONDS,
            socket_timeout=_SOCKET_TIMEOUT_SECONDS,
        )

    def __repr__(self) -> str:
        return f"CeleryResults({self.display!r})"

    def key(self, job_id: str) -> str:
        """The Redis key (and pub/sub channel) Celery reads ``job_id``'s result from."""
        return self.key_prefix + job_id

    def write(self, updates: Sequence[JobUpdate]) -> None:
        """Write the Celery state of every update that has one, in one pipeline.

        Raises:
            redis.RedisError: Redis failed; the caller retries and keeps the acks back.
        """
        pipe = self._client.pipeline(transaction=False)
        count = 0
        for update in updates:
            meta = celery_meta(update.job_id, update.fields)
            if meta is None:
                continue
            key, value = self.key(update.job_id), _dumps(meta)
            pipe.set(key, value, ex=self.expires_seconds)
            pipe.publish(key, value)
            count += 1
        if count:
            pipe.execute()

    def close(self) -> None:
        self._client.close()
