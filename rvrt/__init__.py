"""RVRT in plain PyTorch: the reference model of rvrt-deploy.

``build_model(task, checkpoint)`` gives an eval-mode network whose parameters are the
official ones; ``model(lq)`` equals the official forward; :mod:`rvrt.driver` runs the same
recurrence over any backend's stages and :mod:`rvrt.tiling` tiles it.

Importing ``rvrt`` loads only what serving needs (task presets, the driver, the tiling: numpy
or torch arrays alike); the PyTorch model and its loaders load on first use of their names,
so a serving-only install without PyTorch can import the package.
"""

import importlib

from .config import BRANCHES, TASKS, CheckpointError, RVRTConfig, Task, get_task
from .driver import EagerStages, Stages, run_recurrent
from .tiling import Tiling, blend_windows, iter_restored, restore_tiled, restore_window, window_spans

_TORCH_NAMES = {
    "build_model": ".checkpoint", "read_state_dict": ".checkpoint",
    "guided_deform_attn": ".gda", "guided_deform_attn_reference": ".gda", "RVRT": ".model",
}


def __getattr__(name: str):
    if name in _TORCH_NAMES:
        return getattr(importlib.import_module(_TORCH_NAMES[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["BRANCHES", "CheckpointError", "EagerStages", "RVRT", "RVRTConfig", "Stages", "TASKS", "Task", "Tiling",
           "blend_windows", "build_model", "get_task", "guided_deform_attn", "guided_deform_attn_reference",
           "iter_restored", "read_state_dict", "restore_tiled", "restore_window", "run_recurrent", "window_spans"]
