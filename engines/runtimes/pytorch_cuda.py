"""Eager PyTorch on a CUDA GPU, float32 or float16.

float16 follows the float16 export's precision policy (:class:`rvrt_engines.precision.PrecisionPolicy`)
on the eager modules, without touching the model's code: the weights of the network are float16
except those of its float32 islands, and forward pre-hooks cast tensors where the two meet.

- float32 islands: SpyNet (the ``flow`` stage), each alignment's ``conv_offset`` (flow path:
  the deformable offsets are positions of up to tens of pixels, where float16 resolves 1/64 to
  1/32 px), and every ``nn.LayerNorm`` (the policy's float32 op types).
- The code between modules (stage bodies: flow composition, flow warping and its sampling
  grids, offset arithmetic, residual sums) computes in float32: every float16 module that it
  calls takes float16 inputs and hands back float32. GDA therefore runs float32 here, on the
  fused CUDA kernel (``torch.ops.rvrt.guided_deform_attn``): the op takes one dtype for all
  its inputs and its offsets belong to the flow path. (The float16 graphs differ: they round
  the offsets to float16 at the GDA node.) Its float16 kernel serves float16 callers of the op.
- The reconstruction head (reconstruction, upsampler, last conv) stays float16 from its input
  to the last convolution: its high-resolution activations are the largest tensors of a run.

Tiles are batched by the runner (``Tiling.batch``, ``--batch``): a stage takes any batch.
CUDA graphs are not used: whether they win here has not been measured on a GPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn as nn

from rvrt import BRANCHES, RVRT, EagerStages
from rvrt_engines.precision import PrecisionPolicy

PRECISIONS = ("float32", "float16")
OP_MODULES = {"LayerNormalization": nn.LayerNorm}
"""ONNX op types of ``PrecisionPolicy.fp32_ops`` and the eager modules that compute them."""


class CudaUnavailableError(RuntimeError):
    """No CUDA device for a CUDA runtime: the request is fine, the machine lacks the device (exit
    status 1, as for a missing TensorRT)."""


def stage_modules(model: RVRT, stage: str) -> list[nn.Module]:
    """The modules an exported stage (``flow``, ``extract``, ``<branch>``, ``<branch>_first``,
    ``reconstruct``) computes with."""
    branch = stage.removesuffix("_first")
    if stage == "flow":
        return [model.spynet]
    if stage == "extract":
        return [model.feat_extract]
    if stage == "reconstruct":
        return [model.reconstruction, model.conv_before_upsampler, model.upsampler, model.conv_last]
    if branch in BRANCHES:
        return [model.backbone[branch], model.deform_align[branch]]
    raise ValueError(f"unknown stage {stage!r}: expected flow, extract, reconstruct or a branch of {BRANCHES}")


def float32_islands(model: RVRT, policy: PrecisionPolicy) -> list[nn.Module]:
    """The modules a float16 model keeps float32 under ``policy``."""
    islands = [module for stage in policy.fp32_stages for module in stage_modules(model, stage)]
    if policy.flow_path:
        islands += [model.deform_align[branch].conv_offset for branch in BRANCHES]
    for op in policy.fp32_ops:
        if op not in OP_MODULES:
            raise ValueError(f"eager float16 cannot keep ONNX op {op!r} float32: it maps op types "
                             f"{', '.join(OP_MODULES)} to modules")
        islands += [module for module in model.modules() if isinstance(module, OP_MODULES[op])]
    return islands


def float16_entries(model: RVRT) -> Iterator[tuple[nn.Module, bool]]:
    """Float16 modules that the stage bodies call, each with whether its output goes back to
    float32 code (False: straight into the next float16 module of the reconstruction head)."""
    yield model.feat_extract, True
    for branch in BRANCHES:
        yield model.backbone[branch], True
        align = model.deform_align[branch]
        yield align.conv_offset, True
        for projection in (align.proj_q, align.proj_k, align.proj_v, align.proj, align.mlp):
            yield projection, True
    yield model.reconstruction, False
    yield model.conv_before_upsampler, False
    yield model.upsampler, False
    yield model.conv_last, True


def _cast(value, dtype: torch.dtype):
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, (list, tuple)):
        return type(value)(_cast(item, dtype) for item in value)
    return value


def _inputs_to(dtype: torch.dtype):
    def hook(module, args, kwargs):
        return _cast(args, dtype), {name: _cast(value, dtype) for name, value in kwargs.items()}
    return hook


def _output_to(dtype: torch.dtype):
    def hook(module, args, output):
        return _cast(output, dtype)
    return hook


def half_precision(model: RVRT, policy: PrecisionPolicy | None = None) -> RVRT:
    """Make ``model`` float16 in place, but for the float32 islands of ``policy`` (default: the
    float16 export's), and return it. Call once per model. Its stages take float32 or float16
    inputs; ``extract`` and ``propagate`` give float32 features, ``flow`` float32 flows and
    ``reconstruct`` float32 frames."""
    policy = policy or PrecisionPolicy()
    islands = float32_islands(model, policy)
    op_types = tuple(OP_MODULES[op] for op in policy.fp32_ops)
    # Op islands inside a float32 stage are float32 anyway and take no hooks of their own.
    whole = {id(module) for island in islands if not isinstance(island, op_types) for module in island.modules()}
    kept = whole | {id(island) for island in islands}
    for module in model.modules():
        if id(module) in kept:
            continue
        for parameter in module.parameters(recurse=False):
            parameter.data = parameter.data.half()
        for name, buffer in module.named_buffers(recurse=False):
            if buffer.is_floating_point():
                setattr(module, name, buffer.half())
    for island in islands:
        if id(island) in whole and isinstance(island, op_types):
            continue
        island.register_forward_pre_hook(_inputs_to(torch.float32), with_kwargs=True)
        if isinstance(island, op_types):
            # An op island sits inside float16 code and hands its result back to it.
            island.register_forward_hook(_output_to(torch.float16))
    for module, back_to_float32 in float16_entries(model):
        if id(module) in kept:
            continue
        module.register_forward_pre_hook(_inputs_to(torch.float16), with_kwargs=True)
        if back_to_float32:
            module.register_forward_hook(_output_to(torch.float32))
    return model


@contextlib.contextmanager
def ieee_float32_convolutions():
    """cuDNN convolutions of float32 tensors in float32 while inside: PyTorch's default lets them
    use TF32 (10 mantissa bits, like float16) on Ampere and later GPUs, which would undo the
    float32 islands (SpyNet, offsets) and make float32 runs differ from float32 on the CPU."""
    conv = torch.backends.cudnn.conv
    saved = conv.fp32_precision
    conv.fp32_precision = "ieee"
    try:
        yield
    finally:
        conv.fp32_precision = saved


class CudaStages(EagerStages):
    """The stages of a PyTorch RVRT on a CUDA device, in ``precision`` (float32 or float16, see
    the module's docstring); float32 convolutions in IEEE float32, never TF32."""

    def __init__(self, model: RVRT, precision: str = "float16"):
        super().__init__(model)
        self.precision = precision

    def extract(self, lq):
        with ieee_float32_convolutions():
            return super().extract(lq)

    def flow(self, pair):
        with ieee_float32_convolutions():
            return super().flow(pair)

    def propagate(self, branch, features, key=None, prop=None, flows=()):
        with ieee_float32_convolutions():
            return super().propagate(branch, features, key, prop, flows)

    def reconstruct(self, lq, features):
        with ieee_float32_convolutions():
            return super().reconstruct(lq, features)


def require_cuda(device: str | torch.device = "cuda") -> torch.device:
    """The CUDA device named, or CudaUnavailableError saying why it cannot be used (ValueError
    for a device that is no CUDA device)."""
    device = torch.device(device)
    if device.type != "cuda":
        raise ValueError(f"the CUDA runtime runs on a CUDA device, not {device}: pass --device cuda")
    if not torch.cuda.is_available():
        build = f"this PyTorch build has no CUDA ({torch.__version__})" if torch.version.cuda is None else \
            f"PyTorch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA GPU"
        raise CudaUnavailableError(f"no CUDA GPU: {build}; use --device cpu or the ONNX Runtime backend")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise CudaUnavailableError(f"no CUDA device {device.index}: this machine has {torch.cuda.device_count()}")
    return device


def cuda_stages(model: RVRT, precision: str = "float16", device: str | torch.device = "cuda") -> CudaStages:
    """``model`` moved to ``device`` (in place) in ``precision``, as stages for the recurrent
    driver. Raises CudaUnavailableError without a usable CUDA device, ValueError for an unknown
    precision."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    model = model.to(require_cuda(device)).eval()
    if precision == "float16":
        half_precision(model)
    return CudaStages(model, precision)
