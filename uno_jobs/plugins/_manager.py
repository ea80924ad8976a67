"""The plugin manager: built-ins and entry-point plugins, behind small typed calls.

uno_jobs registers its own built-ins through the same hooks a third party uses (as pytest
does), so ``--type async`` and a plugin's worker type resolve the same way. Contribution
hooks are called once and their merged mappings cached; nothing here runs per job.
"""

from __future__ import annotations

import importlib.metadata
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pluggy

from uno_jobs.config import PluginSettings, plugin_settings
from uno_jobs.errors import ConfigurationError
from uno_jobs.plugins import _hookspecs
from uno_jobs.plugins._hookspecs import PROJECT

if TYPE_CHECKING:
    import argparse

    from uno_jobs.middleware import Middleware
    from uno_jobs.retry import RetryPolicy
    from uno_jobs.store import JobStore
    from uno_jobs.worker import BaseWorker

__all__ = [
    "BUILTIN_NAME",
    "ENTRY_POINT_GROUP",
    "PluginError",
    "PluginInfo",
    "Plugins",
    "get_plugins",
    "reset_plugins",
]

log = logging.getLogger("uno_jobs.plugins")

ENTRY_POINT_GROUP = "uno_jobs"
BUILTIN_NAME = "uno_jobs.builtins"

# Contribution hooks and what their names mean, for listings and errors.
CONTRIBUTIONS: dict[str, str] = {
    "uno_jobs_worker_types": "worker types",
    "uno_jobs_middleware": "middleware",
    "uno_jobs_retry_policies": "retry policies",
    "uno_jobs_job_stores": "job stores",
    "uno_jobs_metrics_exporters": "metrics exporters",
}


class PluginError(ConfigurationError):
    """A plugin could not be loaded or conflicts with another. Names the distribution."""


@dataclass(frozen=True)
class PluginInfo:
    """One loaded plugin: where it comes from and what it contributes."""

    name: str
    distribution: str
    version: str
    builtin: bool
    contributes: dict[str, list[str]] = field(default_factory=dict)
    hooks: tuple[str, ...] = ()


class Plugins:
    """A pluggy ``PluginManager`` for the ``uno_jobs`` project, loaded and checked.

    Args:
        settings: Which third-party plugins to load; default from the environment.
        entry_points: The entry points to consider (default: the installed ones in the
            ``uno_jobs`` group); tests pass their own.
    """

    def __init__(
        self,
        settings: PluginSettings | None = None,
        entry_points: Iterable[importlib.metadata.EntryPoint] | None = None,
    ) -> None:
        self.settings = settings or plugin_settings()
        self.pm = pluggy.PluginManager(PROJECT)
        self.pm.add_hookspecs(_hookspecs)
        self._origin: dict[str, tuple[str, str, bool]] = {}
        self._cache: dict[str, dict[str, Any]] = {}
        self._lock = threading.RLock()
        from uno_jobs.plugins import _builtins

        self.register(
            _builtins, BUILTIN_NAME, distribution="uno-jobs", version=_own_version(), builtin=True
        )
        if entry_points is None:
            entry_points = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
        self._load(entry_points)
        self.pm.check_pending()

    # -- loading --------------------------------------------------------------------------

    def _wanted(self, name: str) -> bool:
        if name in self.settings.blocked:
            return False
        return self.settings.autoload or name in self.settings.explicit

    def _load(self, entry_points: Iterable[importlib.metadata.EntryPoint]) -> None:
        found = set()
        for ep in entry_points:
            found.add(ep.name)
            dist = ep.dist.name if ep.dist is not None else "?"
            version = ep.dist.version if ep.dist is not None else "?"
            if not self._wanted(ep.name):
                log.debug("plugin %s (%s %s) not loaded", ep.name, dist, version)
                continue
            try:
                plugin = ep.load()
            except Exception as exc:
                raise PluginError(
                    f"plugin {ep.name!r} from distribution {dist} {version} failed to import "
                    f"{ep.value!r}: {type(exc).__name__}: {exc}"
                ) from exc
            self.register(plugin, ep.name, distribution=dist, version=version)
            log.info("loaded plugin %s from %s %s", ep.name, dist, version)
        missing = [name for name in self.settings.explicit if name not in found]
        if missing:
            raise PluginError(
                f"plugin(s) {', '.join(map(repr, missing))} asked for in UNO_JOBS_PLUGINS "
                f"are not installed (installed: {', '.join(sorted(found)) or 'none'})"
            )

    def register(
        self,
        plugin: object,
        name: str,
        *,
        distribution: str = "?",
        version: str = "?",
        builtin: bool = False,
    ) -> None:
        """Register a plugin object (a module or an instance with ``@hookimpl`` methods).

        Raises:
            PluginError: its hooks do not match the specifications, or the name is taken.
        """
        with self._lock:
            if self.pm.has_plugin(name):
                owner = self._origin.get(name, ("?", "?", False))[0]
                raise PluginError(
                    f"plugin name {name!r} from {distribution} is already used by {owner}"
                )
            try:
                self.pm.register(plugin, name=name)
                self.pm.check_pending()
            except pluggy.PluginValidationError as exc:
                if self.pm.has_plugin(name):
                    self.pm.unregister(name=name)
                raise PluginError(
                    f"plugin {name!r} from distribution {distribution} {version} is broken: {exc}"
                ) from None
            self._origin[name] = (distribution, version, builtin)
            self._cache.clear()

    def unregister(self, name: str) -> None:
        with self._lock:
            self.pm.unregister(name=name)
            self._origin.pop(name, None)
            self._cache.clear()

    # -- contributions --------------------------------------------------------------------

    def _collect(self, hook_name: str) -> dict[str, Any]:
        """Merge one contribution hook's mappings; a name given twice names both sources."""
        with self._lock:
            cached = self._cache.get(hook_name)
            if cached is not None:
                return cached
            merged: dict[str, Any] = {}
            owner_of: dict[str, str] = {}
            for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                owner = self._describe(impl.plugin_name)
                try:
                    contributed = impl.function() or {}
                except Exception as exc:
                    raise PluginError(
                        f"{hook_name} of plugin {owner} raised {type(exc).__name__}: {exc}"
                    ) from exc
                if not isinstance(contributed, Mapping):
                    raise PluginError(
                        f"{hook_name} of plugin {owner} must return a mapping of names, "
                        f"not {type(contributed).__name__}"
                    )
                for key, value in contributed.items():
                    if key in merged and merged[key] is not value:
                        what = CONTRIBUTIONS.get(hook_name, hook_name)
                        raise PluginError(
                            f"two plugins contribute {what} named {key!r}: "
                            f"{owner_of[key]} and {owner}"
                        )
                    merged[key] = value
                    owner_of[key] = owner
            self._cache[hook_name] = merged
            return merged

    def _describe(self, plugin_name: str) -> str:
        dist, version, _ = self._origin.get(plugin_name, ("?", "?", False))
        return f"{plugin_name} ({dist} {version})"

    def worker_types(self) -> dict[str, type[BaseWorker]]:
        return self._collect("uno_jobs_worker_types")

    def middleware(self) -> dict[str, Callable[[], Middleware]]:
        return self._collect("uno_jobs_middleware")

    def retry_policies(self) -> dict[str, Callable[..., RetryPolicy]]:
        return self._collect("uno_jobs_retry_policies")

    def job_stores(self) -> dict[str, Callable[..., JobStore]]:
        return self._collect("uno_jobs_job_stores")

    def metrics_exporters(self) -> dict[str, Callable[..., Any]]:
        return self._collect("uno_jobs_metrics_exporters")

    def lookup(self, kind: str, name: str) -> Any:
        """The contribution ``name`` of ``kind`` (a key of ``CONTRIBUTIONS``' values).

        Raises:
            ConfigurationError: nothing of that kind has that name; lists what there is.
        """
        hook = next(h for h, what in CONTRIBUTIONS.items() if what == kind)
        found = self._collect(hook)
        if name not in found:
            known = ", ".join(sorted(found)) or "none"
            raise ConfigurationError(
                f"unknown {kind[:-1] if kind.endswith('s') else kind} {name!r} (known: {known})"
            )
        return found[name]

    # -- boot hooks and the command line --------------------------------------------------

    def worker_boot(self, worker: BaseWorker) -> None:
        self.pm.hook.uno_jobs_worker_boot(worker=worker)

    def worker_stopped(self, worker: BaseWorker) -> None:
        self.pm.hook.uno_jobs_worker_stopped(worker=worker)

    def child_boot(self) -> None:
        self.pm.hook.uno_jobs_child_boot()

    def child_exited(self, pid: int) -> None:
        self.pm.hook.uno_jobs_child_exited(pid=pid)

    def add_worker_options(self, parser: argparse.ArgumentParser) -> None:
        self.pm.hook.uno_jobs_add_worker_options(parser=parser)

    def add_cli_commands(self, subparsers: argparse._SubParsersAction[Any]) -> None:
        self.pm.hook.uno_jobs_add_cli_commands(subparsers=subparsers)

    # -- listing --------------------------------------------------------------------------

    def infos(self) -> list[PluginInfo]:
        """Every registered plugin, built-ins first, with what it contributes."""
        out = []
        for name, plugin in self.pm.list_name_plugin():
            if plugin is None:
                continue
            dist, version, builtin = self._origin.get(name, ("?", "?", False))
            contributes: dict[str, list[str]] = {}
            hooks = []
            for caller in self.pm.get_hookcallers(plugin) or []:
                hooks.append(caller.name)
                what = CONTRIBUTIONS.get(caller.name)
                if what is None:
                    continue
                for impl in caller.get_hookimpls():
                    if impl.plugin is plugin:
                        contributed: Any = impl.function() or {}
                        contributes[what] = sorted(contributed)
            out.append(PluginInfo(name, dist, version, builtin, contributes, tuple(sorted(hooks))))
        out.sort(key=lambda info: (not info.builtin, info.name))
        return out


def _own_version() -> str:
    try:
        return importlib.metadata.version("uno-jobs")
    except importlib.metadata.PackageNotFoundError:
        from uno_jobs import __version__

        return __version__


_plugins: Plugins | None = None
_plugins_lock = threading.Lock()


def get_plugins() -> Plugins:
    """The process's plugin manager, loaded on first use (never at import)."""
    global _plugins
    with _plugins_lock:
        if _plugins is None:
            _plugins = Plugins()
        return _plugins


def reset_plugins(plugins: Plugins | None = None) -> None:
    """Replace (or drop, to reload on next use) the process's plugin manager."""
    global _plugins
    with _plugins_lock:
        _plugins = plugins
