"""Building models and loading official checkpoints safely."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import torch

from .config import TASKS, CheckpointError, RVRTConfig, Task, get_task
from .model import RVRT


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of an official checkpoint (``{'params': state_dict}``) or of a bare state dict.

    Loaded with ``weights_only=True``: a file that would need arbitrary code to unpickle is
    refused, never executed.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist (expected an official RVRT .pth file)")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"checkpoint {str(path)!r} is not a readable PyTorch weights file "
                              f"(damaged, truncated or not a checkpoint): {reason}") from None
    if isinstance(content, dict) and isinstance(content.get("params"), dict):
        content = content["params"]
    if not isinstance(content, dict) or not all(isinstance(v, torch.Tensor) for v in content.values()):
        raise CheckpointError(f"checkpoint {str(path)!r} holds {type(content).__name__}, expected a state dict "
                              f"or {{'params': state_dict}} of tensors")
    return content


def describe_architecture(state: dict[str, torch.Tensor]) -> str:
    """A short human description of the network a state dict was saved from."""
    if "feat_extract.main.1.weight" in state:
        return f"a video SR x4 network (embed dim {state['feat_extract.main.1.weight'].shape[0]})"
    if "feat_extract.1.weight" in state:
        weight = state["feat_extract.1.weight"]
        kind = "denoising" if weight.shape[1] == 4 else "deblurring"
        return f"a video {kind} network (embed dim {weight.shape[0]}, {weight.shape[1]} input channels)"
    return "not an RVRT network"


def check_state_dict(model: RVRT, state: dict[str, torch.Tensor], task: Task, source: str) -> None:
    """Raise CheckpointError, naming the task expected and what was found, unless ``state`` fits."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f"{k}: {tuple(state[k].shape)} (expected {tuple(expected[k].shape)})"
                  for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or mismatched:
        found = describe_architecture(state)
        details = "; ".join(part for part in (
            f"{len(missing)} missing keys (e.g. {missing[0]})" if missing else "",
            f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})" if unexpected else "",
            f"{len(mismatched)} shape mismatches (e.g. {mismatched[0]})" if mismatched else "") if part)
        raise CheckpointError(f"checkpoint {source!r} does not fit task {task.short!r} ({task.id}: "
                              f"{describe_architecture(model.state_dict())}); it looks like {found}: {details}")


def build_model(task: str, checkpoint: str | os.PathLike | None = None, *, random_weights: bool = False,
                config: RVRTConfig | None = None, seed: int | None = None) -> RVRT:
    """An eval-mode RVRT for ``task`` (official id or short name, see :data:`rvrt.config.TASKS`).

    checkpoint: an official ``.pth`` file, loaded strictly. Without one, ``random_weights=True``
    must be passed explicitly (tests and demos). ``config`` overrides the task's architecture
    (e.g. ``task.config.tiny()`` in tests). ``seed`` makes random weights reproducible (an
    export records it, so its validation can rebuild the same eager model).
    """
    spec = get_task(task)
    with torch.random.fork_rng(enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        model = RVRT(config or spec.config)
    if checkpoint is None:
        if not random_weights:
            raise ValueError(f"no checkpoint given for task {spec.short!r}: pass the official {spec.id}.pth "
                             f"(see README), or random_weights=True for tests and demos")
    else:
        stem = Path(checkpoint).name.removesuffix(".pth")
        if stem in TASKS and stem != spec.id:
            raise CheckpointError(f"checkpoint {str(checkpoint)!r} is the official {stem} model, but task "
                                  f"{spec.short!r} ({spec.id}) was requested")
        state = read_state_dict(checkpoint)
        check_state_dict(model, state, spec, str(checkpoint))
        model.load_state_dict(state, strict=True)
    return model.eval()
