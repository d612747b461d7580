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

from .stages import StageSpec

# float32 against eager float32: differences are reordered sums (~1e-6 seen on features of
# magnitude ~1); 1e-3 leaves room for long reductions while any wrong op, weight or index
# shows up orders of magnitude above it.
FLOAT32_TOLERANCE = 1e-3
# float16 keeps 11 significant bits (one unit in the last place is ~1e-3 of a value); a stage
# of a few dozen layers accumulates a few of those. 1e-2 of the reference's peak magnitude
# passes that and fails a wrong op, a saturated value or a broken kernel, which are O(1).
FLOAT16_RELATIVE_TOLERANCE = 1e-2

Feed = Mapping[str, np.ndarray]


def tolerance_for(precision: str, reference_peak: float) -> float:
    """Largest admissible absolute difference for a stage computed in ``precision``."""
    if precision == "float32":
        return FLOAT32_TOLERANCE
    if precision in ("float16", "bfloat16"):
        # bfloat16 keeps 8 significant bits, 8x float16's error: it is held to the same gate, which it passes
        # only where its float32 islands keep the flow path and normalisations exact enough.
        return FLOAT16_RELATIVE_TOLERANCE * max(1.0, reference_peak)
    raise ValueError(f"unknown precision {precision!r}: expected 'float32', 'float16' or 'bfloat16'")


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
