"""An allowed module whose import raises something other than ImportError."""

raise RuntimeError("boom at import time")
