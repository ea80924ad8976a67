"""Where a worker's exporter listens: ``uno-jobs worker`` options, else the environment.

The plugin's settings come from, in order: the worker's command-line settings
(``--prometheus-port``, ``--prometheus-host``, readable as ``worker.settings``), then
``UNO_JOBS_PROMETHEUS_PORT`` / ``UNO_JOBS_PROMETHEUS_HOST``, then the defaults (port 9464
on 127.0.0.1). This module is the plugin's only reader of environment variables apart from
``PROMETHEUS_MULTIPROC_DIR`` (``_multiproc.py``).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from uno_jobs.errors import ConfigurationError

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "ENV_HOST", "ENV_PORT", "ExporterSettings"]

ENV_PORT = "UNO_JOBS_PROMETHEUS_PORT"
ENV_HOST = "UNO_JOBS_PROMETHEUS_HOST"
DEFAULT_PORT = 9464
DEFAULT_HOST = "127.0.0.1"


class ExporterSettings(BaseModel):
    """Where the metrics endpoint of a worker listens.

    Attributes:
        host: The address to bind (127.0.0.1: this machine only).
        port: The TCP port; 0 lets the system choose one (see ``PrometheusExporter.port``).
    """

    model_config = ConfigDict(defer_build=True, extra="forbid", frozen=True)

    host: str = Field(DEFAULT_HOST, min_length=1)
    port: int = Field(DEFAULT_PORT, ge=0, le=65535)

    @classmethod
    def resolve(
        cls, cli: Mapping[str, Any], environ: Mapping[str, str] | None = None
    ) -> ExporterSettings:
        """The settings from ``cli`` (a worker's ``settings``), else ``environ``, else defaults.

        Raises:
            ConfigurationError: a value is not valid; names the option or the variable.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        for field, option, variable in (
            ("port", "--prometheus-port", ENV_PORT),
            ("host", "--prometheus-host", ENV_HOST),
        ):
            value = cli.get(f"prometheus_{field}")
            if value is not None:
                values[field], sources[field] = value, option
            elif env.get(variable, "").strip():
                values[field], sources[field] = env[variable].strip(), variable
        try:
            return cls(**values)
        except ValidationError as exc:
            err = exc.errors()[0]
            field = str(err["loc"][0])
            raise ConfigurationError(
                f"prometheus exporter: {sources.get(field, field)}={values.get(field)!r}: "
                f"{err['msg']}"
            ) from None


def port_argument(text: str) -> int:
    """``argparse`` type of ``--prometheus-port``: an integer from 0 to 65535."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is not in 0-65535")
    return port
