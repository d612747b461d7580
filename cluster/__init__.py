"""The cluster layer: rvrt-run's temporal windows served by Ray actors, and rvrt-batch over many videos.

Ray is the ``[cluster]`` extra: its names load on first use, so ``rvrt-batch`` without Ray can say so.
"""

import importlib

__all__ = ["RayWindows", "WindowFailed", "WorkerStats"]


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module(".windows", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
