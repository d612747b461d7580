"""What stays float32 when a network runs in a lower precision, and how close each precision must come to
float32: one record and one gate that the float16 exporter, the float16 CUDA runtime and the bfloat16
OpenVINO runtime all read, here on the serving side so that serving never imports the exporter."""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from .gda_node import OP_TYPE

# float32 against eager float32: differences are reordered sums (~1e-6 seen on features of
# magnitude ~1); 1e-3 leaves room for long reductions while any wrong op, weight or index
# shows up orders of magnitude above it.
FLOAT32_TOLERANCE = 1e-3
# float16 keeps 11 significant bits (one unit in the last place is ~1e-3 of a value); a stage
# of a few dozen layers accumulates a few of those. 1e-2 of the reference's peak magnitude
# passes that and fails a wrong op, a saturated value or a broken kernel, which are O(1).
FLOAT16_RELATIVE_TOLERANCE = 1e-2


def tolerance_for(precision: str, reference_peak: float) -> float:
    """Largest admissible absolute difference for a stage computed in ``precision``."""
    if precision == "float32":
        return FLOAT32_TOLERANCE
    if precision in ("float16", "bfloat16"):
        # bfloat16 keeps 8 significant bits, 8x float16's error: it is held to the same gate, which it passes
        # only where its float32 islands keep the flow path and normalisations exact enough.
        return FLOAT16_RELATIVE_TOLERANCE * max(1.0, reference_peak)
    raise ValueError(f"unknown precision {precision!r}: expected 'float32', 'float16' or 'bfloat16'")


@dataclass(frozen=True)
class PrecisionPolicy:
    """What stays float32 in a float16 graph.

    fp32_ops: op types kept float32. TensorRT itself warns that LayerNormalization overflows
        in float16 (its mean of squares); the CPU emulation computes each op in float32 and
        cannot show that (it measured LayerNormalization and Softmax in float16 no worse).
    fp32_stages: stages kept float32 entirely. SpyNet refines flow coarse to fine, adding
        upsampled flow (in pixels) level by level.
    flow_path: keep float32 everything computed from the flow inputs of a propagation step
        (flow composition, sampling grids, the deformable offsets): these are positions of
        up to tens of pixels, where float16 has a resolution of 1/64 to 1/32 px. Measured on
        the tiny SR model (float16 emulation): the ``*_1`` steps, which output the composed
        flows, differ from eager by 0.24-0.29 with the flow path in float16, 0.004 with it
        in float32.
    """

    fp32_ops: tuple[str, ...] = ("LayerNormalization",)
    fp32_stages: tuple[str, ...] = ("flow",)
    flow_path: bool = True

    def fp32_nodes(self, graph: onnx.GraphProto) -> list[str]:
        """Names of the nodes of a propagation-step graph that compute positions from flows."""
        if not self.flow_path:
            return []
        from_flow = {tensor.name for tensor in graph.input if tensor.name.startswith("flow")}
        names = []
        for node in graph.node:
            # GDA takes the offsets in the graph's float16 like its other inputs (one type T).
            if node.op_type == OP_TYPE or not any(name in from_flow for name in node.input):
                continue
            names.append(node.name)
            # A feature map sampled at flow positions is a feature, not a position.
            if node.op_type == "GridSample" and node.input[0] not in from_flow:
                continue
            from_flow.update(node.output)
        return names
