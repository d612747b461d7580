"""The export units: each RVRT stage as a module with named, fixed-shape tensor inputs.

A :class:`StageSpec` names a stage's graph, its inputs (with shapes for a given tile and
batch) and outputs; the exporter traces ``spec.module`` and the runtime backends feed the
graphs by these names, so both sides agree by construction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

from rvrt.model import BRANCHES, RVRT
from rvrt.tiling import tile_shape_of

FEATURE_NAMES = ("shallow",) + BRANCHES
RAW_FLOW_NAMES = ("flow_n01", "flow_n12", "flow_n23")
UPDATED_FLOW_NAMES = ("flow_n1", "flow_n2")


class SingleInputStage(nn.Module):
    """A stage that maps one tensor to one tensor: ``extract`` or ``flow``."""

    def __init__(self, model: RVRT, method: str):
        super().__init__()
        self.model = model
        self.method = method

    def forward(self, x):
        return getattr(self.model, self.method)(x)


class PropagateStage(nn.Module):
    """One step of ``branch``: inputs are the clip's features, then (unless ``first``) key,
    prop and the flows; outputs prop (and for ``*_1`` the two updated flows)."""

    def __init__(self, model: RVRT, branch: str, first: bool):
        super().__init__()
        self.model = model
        self.branch = branch
        self.first = first
        self.feature_count = 1 + BRANCHES.index(branch)

    def forward(self, *tensors):
        features = list(tensors[:self.feature_count])
        if self.first:
            return self.model.propagate(self.branch, features)
        key, prop, *flows = tensors[self.feature_count:]
        return self.model.propagate(self.branch, features, key, prop, tuple(flows))


class ReconstructStage(nn.Module):
    def __init__(self, model: RVRT):
        super().__init__()
        self.model = model

    def forward(self, lq, *features):
        return self.model.reconstruct(lq, list(features))


@dataclass(frozen=True)
class StageSpec:
    """A stage graph: file stem, input and output names, input shapes."""

    name: str
    inputs: tuple[tuple[str, tuple[int, ...]], ...]
    outputs: tuple[str, ...]

    @property
    def input_names(self) -> list[str]:
        return [name for name, _ in self.inputs]

    def module(self, model: RVRT) -> nn.Module:
        if self.name in ("extract", "flow"):
            return SingleInputStage(model, self.name)
        if self.name == "reconstruct":
            return ReconstructStage(model)
        branch = self.name.removesuffix("_first")
        return PropagateStage(model, branch, first=self.name.endswith("_first"))

    def example_inputs(self, generator: torch.Generator | None = None) -> tuple[torch.Tensor, ...]:
        """Random inputs in realistic ranges: images in [0, 1], features ~ N(0, 1), flows of a
        few pixels."""
        tensors = []
        for name, shape in self.inputs:
            if name in ("lq", "pair"):
                tensors.append(torch.rand(shape, generator=generator))
            elif name.startswith("flow"):
                tensors.append(2.0 * torch.randn(shape, generator=generator))
            else:
                tensors.append(torch.randn(shape, generator=generator))
        return tuple(tensors)


def stage_specs(model: RVRT, tile: int | Sequence[int], batch: int) -> list[StageSpec]:
    """All stage graphs of ``model`` for tiles of ``tile`` input px, (height, width) or one int for a
    square, ``batch`` tiles a call."""
    cfg = model.config
    clip = cfg.clip_size
    height, width = tile_shape_of(tile)
    feat = (height // cfg.feature_stride, width // cfg.feature_stride)
    lq = (batch, clip, cfg.in_channels, height, width)
    features = (batch, clip, cfg.embed_dims[0], *feat)
    specs = [StageSpec("extract", (("lq", lq),), ("shallow",)),
             StageSpec("flow", (("pair", lq),), ("flows",))]
    for i, branch in enumerate(BRANCHES):
        own = tuple((name, features) for name in FEATURE_NAMES[:1 + i])
        specs.append(StageSpec(f"{branch}_first", own, ("prop",)))
        if branch.endswith("_1"):
            flows = tuple((name, (batch, 2, *feat)) for name in RAW_FLOW_NAMES)
            outputs = ("prop",) + UPDATED_FLOW_NAMES
        else:
            flows = tuple((name, (batch, clip, 2, *feat)) for name in UPDATED_FLOW_NAMES)
            outputs = ("prop",)
        specs.append(StageSpec(branch, own + (("key", features), ("prop_in", features)) + flows, outputs))
    specs.append(StageSpec("reconstruct", (("lq", lq),) + tuple((n, features) for n in FEATURE_NAMES), ("hr",)))
    return specs
