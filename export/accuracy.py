"""How close a stage graph must come to its eager float32 stage, and the measurement itself.

Every artefact (ONNX graph, float16 graph, TensorRT engine) is measured the same way: the
stage's eager module and the artefact run on the same random inputs (images in [0, 1],
features ~ N(0, 1), flows of a few pixels), and the largest absolute difference over all
outputs is held against the tolerance of the artefact's precision.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch

from rvrt.model import RVRT

from rvrt_engines.precision import FLOAT16_RELATIVE_TOLERANCE, FLOAT32_TOLERANCE, tolerance_for

from .stages import StageSpec

Feed = Mapping[str, np.ndarray]

__all__ = ["FLOAT16_RELATIVE_TOLERANCE", "FLOAT32_TOLERANCE", "compare_stage", "tolerance_for"]

def compare_stage(model: RVRT, spec: StageSpec, run: Callable[[Feed], Mapping[str, np.ndarray]],
                  precision: str = "float32", seed: int = 1) -> dict:
    """Run ``run`` (feed by input name -> outputs by name) and the eager stage on the same
    random inputs; returns max/mean abs error, the reference's peak, tolerance and verdict."""
    args = spec.example_inputs(torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected = spec.module(model).eval()(*args)
    expected = expected if isinstance(expected, tuple) else (expected,)
    got = run({name: tensor.numpy() for name, tensor in zip(spec.input_names, args)})
    errors = [np.abs(np.asarray(got[name], dtype=np.float32) - reference.numpy())
              for name, reference in zip(spec.outputs, expected, strict=True)]
    peak = float(max(reference.abs().max() for reference in expected))
    max_abs = float(max(error.max() for error in errors))
    tolerance = tolerance_for(precision, peak)
    return {"max_abs": max_abs, "mean_abs": float(np.mean([error.mean() for error in errors])),
            "reference_peak": peak, "tolerance": tolerance, "passed": bool(max_abs <= tolerance)}
