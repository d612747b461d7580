"""Guided deformable attention (GDA) in ONNX: one ``rvrt::GuidedDeformAttention`` node per call.

The exported graph keeps GDA opaque so that TensorRT can swap in a plugin of the same name, while
the model still carries a local function with a standard-op body so that any ONNX runtime (and
TensorRT without the plugin) can execute it. The function computes ``shared/GDA.md``.

Usage::

    from rvrt_export.gda_onnx import export_with_gda
    model_proto = export_with_gda(module, (x,), "model.onnx")

or, for a custom export pipeline: call :func:`register_gda_schema`, pass
``custom_translation_table=GDA_TRANSLATION_TABLE`` to ``torch.onnx.export(..., dynamo=True)``
and run :func:`attach_gda_function` on the resulting ``ModelProto``.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import onnx
import torch
from onnxscript import script, values

import rvrt.gda  # noqa: F401  (registers torch.ops.rvrt.guided_deform_attn)
from rvrt_engines.gda_node import ATTRIBUTES, DOMAIN, DOMAIN_VERSION, OP_TYPE

# The dynamo exporter's own default (torch.onnx._constants.ONNX_DEFAULT_OPSET in torch 2.13).
DEFAULT_OPSET = 20
# The exporter's op library (torchlib) starts at opset 18.
MIN_OPSET = 18
# protobuf cannot serialise a single message over 2 GB; stay well clear of it.
EXTERNAL_DATA_THRESHOLD_BYTES = 1_500_000_000


def register_gda_schema() -> onnx.defs.OpSchema:
    """Register the ``rvrt::GuidedDeformAttention`` schema with onnx (idempotent); return it.

    The dynamo exporter looks the schema up when a translation calls the op, and the onnx checker
    and shape inference use it for the node.
    """
    if onnx.defs.has(OP_TYPE, DOMAIN):
        return onnx.defs.get_schema(OP_TYPE, DOMAIN_VERSION, DOMAIN)
    int_attr = onnx.defs.OpSchema.AttrType.INT
    schema = onnx.defs.OpSchema(
        OP_TYPE,
        DOMAIN,
        DOMAIN_VERSION,
        doc=("Guided deformable attention of RVRT (shared/GDA.md). q: (B*clip, 1, C, H, W) queries; "
             "kv: (B, clip, 2C, H, W) keys then values; offset: (B*clip, clip*groups*kernel_h*kernel_w*2, H, W) "
             "(dy, dx) pairs. Output shaped like q."),
        inputs=[
            onnx.defs.OpSchema.FormalParameter("q", "T", "queries (B*clip, 1, C, H, W)"),
            onnx.defs.OpSchema.FormalParameter("kv", "T", "keys and values (B, clip, 2C, H, W)"),
            onnx.defs.OpSchema.FormalParameter("offset", "T",
                                               "sampling offsets (B*clip, clip*groups*kernel_h*kernel_w*2, H, W)"),
        ],
        outputs=[onnx.defs.OpSchema.FormalParameter("output", "T", "attended values (B*clip, 1, C, H, W)")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "float32 or float16")],
        attributes=[
            onnx.defs.OpSchema.Attribute("kernel_h", int_attr, "sampling window height", required=True),
            onnx.defs.OpSchema.Attribute("kernel_w", int_attr, "sampling window width", required=True),
            onnx.defs.OpSchema.Attribute("padding", int_attr, "window offset from the pixel (kernel_h // 2)",
                                         required=True),
            onnx.defs.OpSchema.Attribute("heads", int_attr, "attention heads (divides C)", required=True),
            onnx.defs.OpSchema.Attribute("groups", int_attr, "deformable groups over the 2C kv channels",
                                         required=True),
            onnx.defs.OpSchema.Attribute("clip", int_attr, "frames per clip", required=True),
        ],
    )
    schema.set_type_and_shape_inference_function(_output_like_q)
    onnx.defs.register_schema(schema)
    return schema


def _output_like_q(ctx: onnx.shape_inference.InferenceContext) -> None:
    ctx.set_output_type(0, ctx.get_input_type(0))


@functools.lru_cache(maxsize=None)
def gda_function(opset_version: int = DEFAULT_OPSET) -> onnx.FunctionProto:
    """The ``rvrt::GuidedDeformAttention`` local function, importing opset ``opset_version`` of "".

    A model may only import one version of the default domain, so the function must be authored
    against the model's version: it is scripted anew for each version asked for.
    """
    if opset_version < MIN_OPSET:
        raise ValueError(f"GDA function needs opset >= {MIN_OPSET}, got {opset_version}")
    return _script_gda(opset_version).to_function_proto()


def _script_gda(opset_version: int):
    op = values.Opset("", opset_version)
    # GridSample-20 renamed the bilinear mode.
    bilinear = "linear" if opset_version >= 20 else "bilinear"

    @script(values.Opset(DOMAIN, DOMAIN_VERSION), default_opset=op)
    def GuidedDeformAttention(q, kv, offset, kernel_h: int, kernel_w: int, padding: int, heads: int, groups: int,
                              clip: int):
        # Every shape comes from Shape ops and attributes so that one function serves all sizes.
        frames = op.Shape(q, start=0, end=1)
        channels = op.Shape(q, start=2, end=3)
        height = op.Shape(q, start=3, end=4)
        width = op.Shape(q, start=4, end=5)
        pixels = op.Mul(height, width)
        kw = op.Reshape(kernel_w, [1])
        n_heads = op.Reshape(heads, [1])
        n_groups = op.Reshape(groups, [1])
        n_clip = op.Reshape(clip, [1])
        points = op.Mul(op.Reshape(kernel_h, [1]), kw)
        group_channels = op.Div(op.Mul(channels, [2]), n_groups)
        head_dim = op.Div(channels, n_heads)

        # Query frame f = batch*clip + t samples kv frame batch*clip + (n + t) % clip.
        frame_index = op.Unsqueeze(op.Range(0, op.Squeeze(frames), 1), [1])
        clip_index = op.Unsqueeze(op.Range(0, clip, 1), [0])
        source = op.Add(op.Mul(op.Div(frame_index, n_clip), n_clip),
                        op.Mod(op.Add(frame_index, clip_index), n_clip))              # (F, clip)
        kv_frames = op.Reshape(kv, op.Concat([-1], op.Shape(kv, start=2), axis=0))
        sampled_frames = op.Gather(kv_frames, source, axis=0)
        sampled_frames = op.Reshape(sampled_frames, op.Concat([-1], group_channels, height, width, axis=0))

        off = op.Reshape(offset, op.Concat(frames, n_clip, n_groups, points, [2], height, width, axis=0))
        dy = op.Gather(off, 0, axis=4)                                                 # (F, clip, G, K, H, W)
        dx = op.Gather(off, 1, axis=4)
        point_index = op.Range(0, op.Squeeze(points), 1)
        rows = op.Sub(op.Range(0, op.Squeeze(height), 1), padding)
        cols = op.Sub(op.Range(0, op.Squeeze(width), 1), padding)
        base_y = op.CastLike(op.Add(op.Unsqueeze(op.Div(point_index, kw), [1, 2]), op.Unsqueeze(rows, [0, 2])), q)
        base_x = op.CastLike(op.Add(op.Unsqueeze(op.Mod(point_index, kw), [1, 2]), op.Unsqueeze(cols, [0, 1])), q)

        # Half-pixel normalisation (align_corners=0) is exact for any size, including 1 pixel,
        # and onnxruntime's CPU GridSample is about 5x faster with it than with align_corners=1.
        one = op.CastLike(1, q)
        half = op.CastLike(0.5, q)
        scale_y = op.Div(op.CastLike(2, q), op.CastLike(height, q))
        scale_x = op.Div(op.CastLike(2, q), op.CastLike(width, q))
        grid_y = op.Sub(op.Mul(op.Add(op.Add(dy, base_y), half), scale_y), one)
        grid_x = op.Sub(op.Mul(op.Add(op.Add(dx, base_x), half), scale_x), one)
        grid = op.Concat(op.Unsqueeze(grid_x, [-1]), op.Unsqueeze(grid_y, [-1]), axis=-1)
        grid = op.Reshape(grid, op.Concat([-1], op.Mul(points, height), width, [2], axis=0))
        sampled = op.GridSample(sampled_frames, grid, mode=bilinear, padding_mode="zeros", align_corners=0)

        # Pixels stay innermost so the products and sums below run over long contiguous rows.
        sampled = op.Reshape(sampled, op.Concat(frames, n_clip, [2], n_heads, head_dim, points, pixels, axis=0))
        keys, vals = op.Split(sampled, axis=2, num_outputs=2)
        keys = op.Squeeze(keys, [2])                                                   # (F, clip, heads, d, K, HW)
        vals = op.Squeeze(vals, [2])
        query = op.Reshape(q, op.Concat(frames, [1], n_heads, head_dim, [1], pixels, axis=0))
        scale = op.Div(one, op.Sqrt(op.CastLike(head_dim, q)))
        logits = op.Mul(op.ReduceSum(op.Mul(query, keys), [3], keepdims=0), scale)   # (F, clip, heads, K, HW)
        logits = op.Transpose(logits, perm=[0, 2, 1, 3, 4])
        weights = op.Softmax(op.Reshape(logits, op.Concat(frames, n_heads, [-1], pixels, axis=0)), axis=2)
        weights = op.Reshape(weights, op.Concat(frames, n_heads, n_clip, points, pixels, axis=0))
        weights = op.Unsqueeze(op.Transpose(weights, perm=[0, 2, 1, 3, 4]), [3])     # (F, clip, heads, 1, K, HW)
        attended = op.ReduceSum(op.Mul(weights, vals), [1, 4], keepdims=0)
        return op.Reshape(attended, op.Shape(q))

    return GuidedDeformAttention


_RVRT_OPSET = values.Opset(DOMAIN, DOMAIN_VERSION)


def translate_guided_deform_attn(q, kv, offset, kernel_h: int, kernel_w: int, padding: int, heads: int, groups: int,
                                 clip: int):
    """Translation of ``torch.ops.rvrt.guided_deform_attn.default`` for the dynamo exporter.

    Emits one ``rvrt::GuidedDeformAttention`` node; :func:`register_gda_schema` must have run
    before the export (the exporter reads the schema to bind inputs and attributes).
    """
    return _RVRT_OPSET.GuidedDeformAttention(q, kv, offset, kernel_h=kernel_h, kernel_w=kernel_w, padding=padding,
                                             heads=heads, groups=groups, clip=clip)


GDA_TRANSLATION_TABLE = {torch.ops.rvrt.guided_deform_attn.default: translate_guided_deform_attn}


def default_opset_version(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    raise ValueError("model imports no default ONNX opset")


def attach_gda_function(model: onnx.ModelProto) -> onnx.ModelProto:
    """Add the GDA local function (matching the model's default opset) and the ``rvrt`` import, in place.

    Idempotent: a GDA function already present is replaced.
    """
    function = gda_function(default_opset_version(model))
    kept = [f for f in model.functions if (f.domain, f.name) != (DOMAIN, OP_TYPE)]
    del model.functions[:]
    model.functions.extend(kept + [function])
    if not any(entry.domain == DOMAIN for entry in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid(DOMAIN, DOMAIN_VERSION))
    return model


def export_with_gda(module: torch.nn.Module, args: tuple, path: str | os.PathLike, *,
                    opset: int = DEFAULT_OPSET, input_names: list[str] | None = None,
                    output_names: list[str] | None = None, dynamic_shapes=None,
                    external_data: bool | None = None) -> onnx.ModelProto:
    """Export ``module(*args)`` to ``path`` with each GDA call as one ``rvrt::GuidedDeformAttention`` node.

    Attaches the GDA function, checks the model (``full_check``) and stores inferred shapes.
    ``external_data``: None stores weights in ``<path>.data`` only when the model exceeds 1.5 GB.
    Returns the saved model (with weights in memory).
    """
    register_gda_schema()
    program = torch.onnx.export(module, args, dynamo=True, verbose=False, opset_version=opset, input_names=input_names,
                                output_names=output_names, dynamic_shapes=dynamic_shapes,
                                custom_translation_table=GDA_TRANSLATION_TABLE)
    model = attach_gda_function(program.model_proto)
    if external_data is None:
        external_data = model.ByteSize() > EXTERNAL_DATA_THRESHOLD_BYTES
    path = Path(path)
    if external_data:
        # The in-memory checker cannot hold > 2 GB protos: check and infer through the file.
        onnx.save_model(model, path, save_as_external_data=True, location=path.name + ".data")
        onnx.checker.check_model(path, full_check=True)
        onnx.shape_inference.infer_shapes_path(path, path, check_type=True, strict_mode=True)
        return onnx.load_model(path)
    onnx.checker.check_model(model, full_check=True)
    model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    onnx.save_model(model, path)
    return model
