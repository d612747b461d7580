"""The cluster layer: rvrt-run's temporal windows served by Ray actors, and rvrt-batch over many videos."""

from .windows import RayWindows, WindowFailed, WorkerStats

__all__ = ["RayWindows", "WindowFailed", "WorkerStats"]
