"""An allowed module that defines no tasks."""
