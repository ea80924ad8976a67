"""An allowed module whose import fails with ImportError."""

import taskpkg_missing_dependency_xyz  # type: ignore[import-not-found]  # noqa: F401
