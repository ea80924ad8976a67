"""Fixture package for tests/unit/test_tasks.py: modules the task resolver imports.

Tests remove the submodules from ``sys.modules`` to check whether a resolution imported
them, so nothing here may be imported at collection time except this file.
"""

from uno_jobs.tasks import TaskRegistry

REGISTRY = TaskRegistry()
"""The registry the fixture modules record their tasks into (not the default one)."""
