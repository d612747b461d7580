"""The recurrent driver: RVRT's loop over clips and branches, written once for every backend.

A backend supplies the four stages (:class:`Stages`); the driver owns the data flow that the
official ``RVRT.forward`` has: flows of neighbouring frames, then the branches backward_1,
forward_1, backward_2, forward_2 over the clips, then reconstruction clip by clip.
"""

from __future__ import annotations

from typing import Any, Protocol

from .arrays import array_namespace
from .config import BRANCHES

Array = Any
"""A numpy array or a torch tensor (:mod:`rvrt.arrays`): the driver computes with either."""


class Stages(Protocol):
    """What a backend provides. Arrays are of the backend's kind: numpy arrays (ONNX Runtime on
    the CPU) or torch tensors on its device; shapes are documented on :class:`rvrt.model.RVRT`'s
    methods of the same names."""

    clip_size: int

    def extract(self, lq: Array) -> Array: ...

    def flow(self, pair: Array) -> Array: ...

    def propagate(self, branch: str, features: list[Array], key: Array | None = None,
                  prop: Array | None = None, flows: tuple[Array, ...] = ()) -> tuple[Array, ...]:
        ...

    def reconstruct(self, lq: Array, features: list[Array]) -> Array: ...


class EagerStages:
    """The stages of a PyTorch :class:`~rvrt.model.RVRT` module, run eagerly."""

    def __init__(self, model):
        self.model = model
        self.clip_size = model.clip_size

    def extract(self, lq):
        return self.model.extract(lq)

    def flow(self, pair):
        return self.model.flow(pair)

    def propagate(self, branch, features, key=None, prop=None, flows=()):
        return self.model.propagate(branch, features, key, prop, flows)

    def reconstruct(self, lq, features):
        return self.model.reconstruct(lq, features)


def pad_frames_to_clips(lq: Array, clip_size: int) -> Array:
    """Mirror the last frames so that (n, t, ...) has a whole number of clips."""
    missing = -lq.shape[1] % clip_size
    if not missing:
        return lq
    xp = array_namespace(lq)
    return xp.concat([lq, xp.flip(lq[:, -missing:], axis=1)], axis=1)


def run_recurrent(stages: Stages, lq: Array) -> Array:
    """Restore a sequence: lq (n, t, cin, H, W) -> (n, t, 3, H*s, W*s), of lq's array kind.

    Keeps every clip's features of every branch (the recurrence needs them all): bound the
    memory with temporal windows (:mod:`rvrt.tiling`).
    """
    frames = lq.shape[1]
    clip = stages.clip_size
    lq = pad_frames_to_clips(lq, clip)
    clips = [lq[:, i:i + clip] for i in range(0, lq.shape[1], clip)]
    count = len(clips)

    pair_flows = [stages.flow(lq[:, i:i + 2]) for i in range(lq.shape[1] - 1)]
    backward_flows = [f[:, 0] for f in pair_flows]
    forward_flows = [f[:, 1] for f in pair_flows]

    feats: dict[str, list[Array]] = {"shallow": [stages.extract(c) for c in clips]}
    updated_flows: dict[str, list] = {}
    for branch in BRANCHES:
        backward = branch.startswith("backward")
        direction = branch.split("_")[0]
        order = list(range(count))[::-1] if backward else list(range(count))
        previous_branch = list(feats)[-1]
        outputs: list = [None] * count
        if branch.endswith("_1"):
            updated_flows[direction] = [None] * count
        for visit, idx in enumerate(order):
            features = [feats[name][idx] for name in feats]
            if visit == 0:
                outputs[idx] = stages.propagate(branch, features)[0]
                continue
            before = order[visit - 1]
            key, prop = feats[previous_branch][before], outputs[before]
            if branch.endswith("_1"):
                # The three frame pairs spanning the previous and the current clip, in visiting order.
                first = clip * idx
                raw = ((backward_flows[first + 2], backward_flows[first + 1], backward_flows[first]) if backward
                       else (forward_flows[first - 2], forward_flows[first - 1], forward_flows[first]))
                outputs[idx], *updated_flows[direction][idx] = stages.propagate(branch, features, key, prop, raw)
            else:
                outputs[idx] = stages.propagate(branch, features, key, prop, tuple(updated_flows[direction][idx]))[0]
        feats[branch] = outputs

    restored = [stages.reconstruct(c, [feats[name][i] for name in feats]) for i, c in enumerate(clips)]
    return array_namespace(lq).concat(restored, axis=1)[:, :frames]
