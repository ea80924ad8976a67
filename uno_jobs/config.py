"""Where settings come from: options first, then the environment, then defaults.

This is the only module that reads environment variables (STYLE.md §4). A producer and a
worker find the broker and the job store the same way (DESIGN.md §1):

- broker: the ``broker_url`` option, else ``UNO_JOBS_BROKER_URL``, else the embedded
  broker under ``UNO_JOBS_HOME``;
- store: the ``store_url`` option, else ``UNO_JOBS_STORE_URL``, else the same Redis when
  the broker is Redis, else the embedded SQLite store under ``UNO_JOBS_HOME``;
- coordinator (``WorkerCoordinator``, ``DistributedWorker``): the ``storage_url`` /
  ``coordinator_url`` option, else ``UNO_JOBS_COORDINATOR_URL``, else the broker's URL when
  it is Redis; its keys' prefix: ``?key_prefix=`` on that URL, else
  ``UNO_JOBS_CLUSTER_KEY_PREFIX``, else ``uno_jobs:``;
- retention of finished records, dead letters and cancellations: the option, else
  ``UNO_JOBS_RETENTION_SECONDS``, else 7 days.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from uno_jobs.errors import ConfigurationError

__all__ = [
    "ENV_BROKER_URL",
    "ENV_HOME",
    "ENV_RETENTION_SECONDS",
    "ENV_STORE_URL",
    "PluginSettings",
    "embedded_broker_path",
    "plugin_settings",
    "redact_url",
    "resolve_broker_url",
    "resolve_retention_seconds",
    "resolve_store_url",
    "uno_jobs_home",
]

ENV_HOME = "UNO_JOBS_HOME"
ENV_BROKER_URL = "UNO_JOBS_BROKER_URL"
ENV_STORE_URL = "UNO_JOBS_STORE_URL"
ENV_RETENTION_SECONDS = "UNO_JOBS_RETENTION_SECONDS"
ENV_ALLOWED_MODULES = "UNO_JOBS_ALLOWED_MODULES"
ENV_COORDINATOR_URL = "UNO_JOBS_COORDINATOR_URL"
ENV_CLUSTER_KEY_PREFIX = "UNO_JOBS_CLUSTER_KEY_PREFIX"
ENV_DISABLE_PLUGIN_AUTOLOAD = "UNO_JOBS_DISABLE_PLUGIN_AUTOLOAD"
ENV_PLUGINS = "UNO_JOBS_PLUGINS"
ENV_BLOCK_PLUGINS = "UNO_JOBS_BLOCK_PLUGINS"

EMBEDDED_SCHEME = "embedded"
# The same default as uno_jobs.store.DEFAULT_RETENTION_SECONDS (the store imports this module).
_DEFAULT_RETENTION_SECONDS = 7 * 24 * 3600.0

# scheme://user:password@ with anything up to the last '@' as the password.
_RAW_PASSWORD = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*://[^:/@]*:).*@")


def uno_jobs_home() -> Path:
    """The folder of the embedded broker and store.

    ``UNO_JOBS_HOME`` if set, else ``$XDG_DATA_HOME/uno_jobs`` (``~/.local/share/uno_jobs``),
    so a producer and a worker started from different folders share it.
    """
    explicit = os.environ.get(ENV_HOME)
    if explicit:
        return Path(explicit).expanduser().resolve()
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home).expanduser().resolve() / "uno_jobs"


def resolve_broker_url(option: str | None = None) -> str:
    """The broker URL to use: the option, the environment, or the embedded broker."""
    if option:
        return option
    return os.environ.get(ENV_BROKER_URL) or f"{EMBEDDED_SCHEME}://"


def resolve_store_url(option: str | None, broker_url: str) -> str:
    """The job store URL to use (see the module docstring for the order)."""
    if option:
        return option
    from_env = os.environ.get(ENV_STORE_URL)
    if from_env:
        return from_env
    if urlsplit(broker_url).scheme in ("redis", "rediss"):
        return _strip_query(broker_url)
    return f"sqlite://{uno_jobs_home() / 'jobs.sqlite3'}"


def resolve_coordinator_url(option: str | None, broker_url: str | None = None) -> str:
    """The coordinator's Redis URL: the option, the environment, or a Redis broker's URL.

    Raises:
        ConfigurationError: none of them gives a Redis URL.
    """
    if option:
        return option
    from_env = os.environ.get(ENV_COORDINATOR_URL)
    if from_env:
        return from_env
    if broker_url and urlsplit(broker_url).scheme in ("redis", "rediss"):
        return broker_url
    raise ConfigurationError(
        f"coordinator_url: no Redis URL for the cluster coordinator (pass coordinator_url, "
        f"set {ENV_COORDINATOR_URL}, or use a Redis broker)"
    )


def resolve_cluster_key_prefix(option: str | None, default: str) -> str:
    """The prefix of the cluster's keys: the URL's ``key_prefix``, the environment, default."""
    return option or os.environ.get(ENV_CLUSTER_KEY_PREFIX) or default


def resolve_retention_seconds(option: float | None = None) -> float:
    """How long stores keep finished records, dead letters and cancellations.

    The option, else ``UNO_JOBS_RETENTION_SECONDS`` (seconds, e.g. ``86400`` for a day),
    else 7 days.

    Raises:
        ConfigurationError: The value is not a positive number of seconds; the message
            names where it came from.
    """
    if option is not None:
        return _positive_seconds(option, "retention_seconds")
    raw = os.environ.get(ENV_RETENTION_SECONDS, "").strip()
    if not raw:
        return _DEFAULT_RETENTION_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    return _positive_seconds(value, ENV_RETENTION_SECONDS, raw)


def _positive_seconds(value: float, name: str, shown: object = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigurationError(
            f"{name} must be a positive number of seconds, got {shown or value!r}"
        )
    if math.isinf(value):
        raise ConfigurationError(
            f"{name} must be a finite number of seconds, got {shown or value!r}"
        )
    return float(value)


def resolve_allowed_modules(option: list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """Module prefixes a worker may import tasks from: the option, else the environment.

    ``UNO_JOBS_ALLOWED_MODULES`` is a comma-separated list.
    """
    if option is not None:
        return tuple(option)
    raw = os.environ.get(ENV_ALLOWED_MODULES, "")
    return tuple(part.strip() for part in raw.split(",") if part.strip())


@dataclass(frozen=True)
class PluginSettings:
    """Which third-party plugins to load (the built-ins always load).

    Attributes:
        autoload: Load every ``uno_jobs`` entry point (``UNO_JOBS_DISABLE_PLUGIN_AUTOLOAD``
            set to anything but ``0``/``false``/empty turns it off).
        explicit: Entry point names loaded even with autoload off (``UNO_JOBS_PLUGINS``,
            comma-separated), as pytest's ``-p NAME``.
        blocked: Entry point names never loaded (``UNO_JOBS_BLOCK_PLUGINS``).
    """

    autoload: bool = True
    explicit: tuple[str, ...] = ()
    blocked: tuple[str, ...] = ()


def plugin_settings() -> PluginSettings:
    """Plugin settings from the environment."""
    flag = os.environ.get(ENV_DISABLE_PLUGIN_AUTOLOAD, "").strip().lower()
    return PluginSettings(
        autoload=flag in ("", "0", "false", "no"),
        explicit=_names(os.environ.get(ENV_PLUGINS, "")),
        blocked=_names(os.environ.get(ENV_BLOCK_PLUGINS, "")),
    )


def otlp_traces_configured() -> bool:
    """Whether the standard ``OTEL_*`` variables ask for traces over OTLP.

    True when ``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is
    set, ``OTEL_SDK_DISABLED`` is not ``true`` and ``OTEL_TRACES_EXPORTER`` (default
    ``otlp``) names ``otlp``. The exporter itself reads the rest (headers, timeouts).
    """
    env = os.environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = _names(env.get("OTEL_TRACES_EXPORTER", "otlp").lower())
    if "otlp" not in exporters:
        return False
    endpoints = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    return any(env.get(name, "").strip() for name in endpoints)


def _names(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def embedded_broker_path(url: str) -> Path:
    """The SQLite file of an ``embedded://`` URL (``embedded:///abs/path`` names one)."""
    path = urlsplit(url).path
    if path and path != "/":
        return Path(path)
    return uno_jobs_home() / "broker.sqlite3"


def redact_url(url: str) -> str:
    """The URL with its password replaced by ``***``: safe for logs, errors and reprs."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        redacted = _RAW_PASSWORD.sub(r"\g<1>***@", url)
        return redacted if redacted != url else "<unparsable url>"
    if password is None:
        # A raw '#', '/' or '?' in a password hides it from urlsplit: redact by shape.
        return _RAW_PASSWORD.sub(r"\g<1>***@", url) if "@" in url else url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return urlunsplit((parts.scheme, f"{user}:***@{hostport}", parts.path, parts.query, ""))


def _strip_query(url: str) -> str:
    """Keep the broker's ``key_prefix`` (the store shares it); drop broker-only options."""
    parts = urlsplit(url)
    kept = "&".join(
        item for item in parts.query.split("&") if item.split("=", 1)[0] == "key_prefix"
    )
    return urlunsplit((parts.scheme, parts.netloc, parts.path, kept, ""))
