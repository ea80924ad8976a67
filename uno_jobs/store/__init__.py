"""Job state and results: the ``JobStore`` contract and ``open_store``.

Three stores ship with uno_jobs, picked by the URL's scheme:

- ``memory://`` or ``memory://NAME``: in-process dictionaries, for tests. Stores opened
  with the same URL in one process share their data.
- ``sqlite:///abs/path/jobs.sqlite3``: the embedded store, one file shared by the
  processes of one host.
- ``redis://[:password@]host:port/db?key_prefix=uno_jobs:`` (or ``rediss://``): shared
  by every host; the only query option is ``key_prefix``.

Finished records, dead letters and cancellations are kept for ``retention_seconds``
(default ``UNO_JOBS_RETENTION_SECONDS``, else 7 days); results larger than
``result_limit_bytes`` (default 1 MiB) are replaced by ``None`` with
``result_truncated=True``.
"""

from __future__ import annotations

import re
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

from uno_jobs.config import redact_url, resolve_retention_seconds
from uno_jobs.errors import ConfigurationError
from uno_jobs.store._base import (
    DEFAULT_RESULT_LIMIT_BYTES,
    DEFAULT_RETENTION_SECONDS,
    FINISHED,
    DeadLetter,
    JobRecord,
    JobStatus,
    JobStore,
    JobUpdate,
    ScheduledJob,
)

__all__ = [
    "DEFAULT_RESULT_LIMIT_BYTES",
    "DEFAULT_RETENTION_SECONDS",
    "FINISHED",
    "SUPPORTED_SCHEMES",
    "DeadLetter",
    "JobRecord",
    "JobStatus",
    "JobStore",
    "JobUpdate",
    "ScheduledJob",
    "open_builtin_store",
    "open_store",
]

SUPPORTED_SCHEMES = ("memory", "sqlite", "redis", "rediss")


def open_store(
    url: str,
    *,
    retention_seconds: float | None = None,
    result_limit_bytes: int = DEFAULT_RESULT_LIMIT_BYTES,
) -> JobStore:
    """Open the job store that ``url`` names, by its scheme.

    The built-in schemes and those of plugins (``uno_jobs_job_stores``) resolve the same
    way, through the plugin manager. ``retention_seconds`` defaults to
    ``UNO_JOBS_RETENTION_SECONDS``, else 7 days.

    Raises:
        ConfigurationError: no store has that scheme, the store refused the URL, or the
            retention is not a positive number of seconds.
    """
    from uno_jobs.plugins import get_plugins

    retention_seconds = resolve_retention_seconds(retention_seconds)

    try:
        scheme = urlsplit(url).scheme
    except ValueError as exc:
        raise _bad_url(url, f"malformed ({exc})") from None
    stores = get_plugins().job_stores()
    factory = stores.get(scheme)
    if factory is None:
        known = ", ".join(f"{name}://" for name in stores)
        raise ConfigurationError(
            f"bad job store URL {_shown(url)!r}: unknown scheme {scheme!r}; "
            f"supported schemes: {known}"
        )
    return factory(url, retention_seconds=retention_seconds, result_limit_bytes=result_limit_bytes)


def open_builtin_store(
    url: str,
    *,
    retention_seconds: float = DEFAULT_RETENTION_SECONDS,
    result_limit_bytes: int = DEFAULT_RESULT_LIMIT_BYTES,
) -> JobStore:
    """Open a built-in job store (see the module docstring for the schemes).

    Nothing is connected yet: the store connects on first use.

    Args:
        url: The store's URL.
        retention_seconds: How long finished records and dead letters are kept.
        result_limit_bytes: The largest JSON-encoded result that is stored.

    Returns:
        The store.

    Raises:
        ConfigurationError: An unknown scheme, a malformed URL, an unknown query option,
            or a retention or limit that is not positive. The message names the URL with
            its password redacted.
    """
    if not retention_seconds > 0:
        raise ConfigurationError(f"retention_seconds must be positive, got {retention_seconds!r}")
    if result_limit_bytes <= 0:
        raise ConfigurationError(f"result_limit_bytes must be positive, got {result_limit_bytes!r}")
    parts, options = _parse(url)
    if parts.scheme == "memory":
        from uno_jobs.store._memory import MemoryStore

        return MemoryStore(
            url, retention_seconds=retention_seconds, result_limit_bytes=result_limit_bytes
        )
    if parts.scheme == "sqlite":
        if parts.netloc or not parts.path.startswith("/") or parts.path.endswith("/"):
            raise _bad_url(url, "expected sqlite:///absolute/path/to/file")
        from uno_jobs.store._sqlite import SQLiteStore

        return SQLiteStore(
            unquote(parts.path),
            url=url,
            retention_seconds=retention_seconds,
            result_limit_bytes=result_limit_bytes,
        )
    db = parts.path.strip("/")
    if not parts.hostname or (db and not db.isdigit()):
        raise _bad_url(url, "expected redis://[:password@]host[:port][/db]")
    from uno_jobs.store._redis import DEFAULT_KEY_PREFIX, RedisStore

    prefix = options.get("key_prefix", DEFAULT_KEY_PREFIX)
    return RedisStore(
        url,
        key_prefix=prefix,
        retention_seconds=retention_seconds,
        result_limit_bytes=result_limit_bytes,
    )


def _parse(url: str) -> tuple[SplitResult, dict[str, str]]:
    """Split ``url`` and check its scheme and query options."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsing the port is what validates it
        pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError as exc:
        raise _bad_url(url, f"malformed ({exc})") from None
    if parts.scheme not in SUPPORTED_SCHEMES:
        raise _bad_url(url, f"unknown scheme {parts.scheme!r}")
    options = dict(pairs)
    if len(options) < len(pairs):
        raise _bad_url(url, "a query option is given twice")
    allowed = {"key_prefix"} if parts.scheme in ("redis", "rediss") else set()
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise _bad_url(url, f"unknown query option {unknown[0]!r}")
    return parts, options


def _shown(url: str) -> str:
    try:
        shown = redact_url(url)
    except ValueError:  # a port that is not a number
        shown = "<unparsable url>"
    if shown == "<unparsable url>":
        # urlsplit gave up, so hide whatever sits between "user:" and "@" by hand.
        shown = re.sub(r"(//[^/@:]*:)[^@]*@", r"\1***@", url)
    return shown


def _bad_url(url: str, problem: str) -> ConfigurationError:
    shown = _shown(url)
    schemes = ", ".join(f"{scheme}://" for scheme in SUPPORTED_SCHEMES)
    return ConfigurationError(
        f"bad job store URL {shown!r}: {problem}; supported schemes: {schemes}"
    )
