"""RVRT in plain PyTorch: the reference model of rvrt-deploy.

``build_model(task, checkpoint)`` gives an eval-mode network whose parameters are the
official ones; ``model(lq)`` equals the official forward; :mod:`rvrt.driver` runs the same
recurrence over any backend's stages and :mod:`rvrt.tiling` tiles it.
"""

from .checkpoint import CheckpointError, build_model, read_state_dict
from .config import TASKS, RVRTConfig, Task, get_task
from .driver import EagerStages, Stages, run_recurrent
from .gda import guided_deform_attn, guided_deform_attn_reference
from .model import BRANCHES, RVRT
from .tiling import Tiling, blend_windows, iter_restored, restore_tiled, restore_window, window_spans

__all__ = ["BRANCHES", "CheckpointError", "EagerStages", "RVRT", "RVRTConfig", "Stages", "TASKS", "Task", "Tiling",
           "blend_windows", "build_model", "get_task", "guided_deform_attn", "guided_deform_attn_reference",
           "iter_restored", "read_state_dict", "restore_tiled", "restore_window", "run_recurrent", "window_spans"]
