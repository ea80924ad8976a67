"""Fails to import, as a plugin with a missing dependency would."""

import not_a_real_dependency_of_anything  # noqa: F401
