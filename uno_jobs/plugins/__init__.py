"""Plugins: worker types, middleware, retry policies, job stores, metrics exporters and CLI
commands, found through pluggy and the ``uno_jobs`` entry-point group.

Write a plugin as a module with functions marked ``@hookimpl`` (the hook names are in
``uno_jobs.plugins.hookspecs``) and declare it in your ``pyproject.toml``::

    [project.entry-points.uno_jobs]
    my_plugin = "my_package.uno_plugin"

``UNO_JOBS_DISABLE_PLUGIN_AUTOLOAD=1`` stops loading installed plugins (the built-ins
stay); ``UNO_JOBS_PLUGINS=a,b`` loads those even then; ``UNO_JOBS_BLOCK_PLUGINS=c`` never
loads ``c``. ``uno-jobs plugins`` lists what was loaded.
"""

from uno_jobs.plugins import _hookspecs as hookspecs
from uno_jobs.plugins._hookspecs import hookimpl, hookspec
from uno_jobs.plugins._manager import (
    BUILTIN_NAME,
    ENTRY_POINT_GROUP,
    PluginError,
    PluginInfo,
    Plugins,
    get_plugins,
    reset_plugins,
)

__all__ = [
    "BUILTIN_NAME",
    "ENTRY_POINT_GROUP",
    "PluginError",
    "PluginInfo",
    "Plugins",
    "get_plugins",
    "hookimpl",
    "hookspec",
    "hookspecs",
    "reset_plugins",
]
