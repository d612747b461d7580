"""The GDA CUDA kernel for PyTorch (rvrt_plugins.gda_cuda) and the eager CUDA runtime
(rvrt_engines.runtimes.pytorch_cuda).

Without a GPU: the kernel-only library builds with CMake and nvcc (compile only, sm_80 and sm_90),
is cached by sources and architectures, says what is missing without a CUDA compiler, refuses
inputs it cannot take with a message, and its C entry point reports errors as codes and text;
the float16 model keeps the float32 islands of the export's precision policy and restores a
clip within one 8-bit level of float32 (CPU float16). With a GPU (``pytest -m gpu``): the kernel
against the reference in float32 and float16, through the op, and the float16 runtime on CUDA.
"""

import copy
import ctypes
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from conftest import gda_inputs, random_clip, tiny_model
from rvrt import BRANCHES, guided_deform_attn, guided_deform_attn_reference, run_recurrent
from rvrt_engines.runtimes.pytorch_cuda import CudaStages, CudaUnavailableError, cuda_stages, float32_islands, half_precision
from rvrt_export.accuracy import FLOAT32_TOLERANCE
from rvrt_engines.precision import PrecisionPolicy
from rvrt_plugins import gda_cuda
from rvrt_plugins.build import GDA_SOURCE_DIR, PluginBuildError

REPOSITORY = Path(__file__).resolve().parents[1]
HAS_GPU = torch.cuda.is_available()
TOOLS = shutil.which("cmake") is not None and (shutil.which("nvcc") or os.environ.get("CUDACXX")
                                                or Path("/usr/local/cuda/bin/nvcc").exists())
needs_toolkit = pytest.mark.skipif(not TOOLS, reason="needs cmake and nvcc (CUDA toolkit) to build the kernel library")
needs_gpu = pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU (torch.cuda.is_available() is False)")


def inputs_as(batch, clip, channels, height, width, groups, kernel, dtype=torch.float32, scale=3.0, device="cpu"):
    """:func:`conftest.gda_inputs` drawn in float32, then in ``dtype`` on ``device``."""
    return tuple(t.to(device=device, dtype=dtype)
                 for t in gda_inputs(batch, clip, channels, height, width, groups, kernel, offset_std=scale))


# -- building the library (no GPU needed) -------------------------------------------------------

@pytest.fixture(scope="module")
def built_library(tmp_path_factory):
    """(library, cache, sources): built from a copy of plugins/gda/, so that the cache keys the
    tests compare hold still while the checkout changes."""
    cache = tmp_path_factory.mktemp("gda-cuda-cache")
    sources = tmp_path_factory.mktemp("gda-sources") / "gda"
    shutil.copytree(GDA_SOURCE_DIR, sources, ignore=shutil.ignore_patterns("build*"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RVRT_PLUGINS_CACHE", str(cache))
        patch.delenv("RVRT_GDA_CUDA_LIBRARY", raising=False)
        yield gda_cuda.kernel_library("80;90", sources), cache, sources


@needs_toolkit
def test_library_builds_for_sm80_and_sm90_without_tensorrt(built_library):
    library, cache, sources = built_library
    assert library.parent == cache and library.stat().st_size > 0
    nm = shutil.which("nm")
    if nm:
        exported = subprocess.run([nm, "-D", "--defined-only", str(library)], capture_output=True, text=True).stdout
        assert [line.split()[-1] for line in exported.splitlines()] == ["rvrt_gda_cuda_forward"]
    # A second request finds the cached file: same path, not rebuilt.
    modified = library.stat().st_mtime_ns
    assert gda_cuda.kernel_library("80;90", sources) == library and library.stat().st_mtime_ns == modified
    assert [path.name for path in cache.iterdir()] == [library.name]


@needs_toolkit
def test_entry_point_reports_errors_as_codes_and_text(built_library):
    forward = gda_cuda.load_library(built_library[0]).rvrt_gda_cuda_forward
    error = ctypes.create_string_buffer(256)
    shape = [4, 2, 24, 8, 8, 3, 3, 1]   # frames, clip, C, H, W, kernel_h, kernel_w, padding
    assert forward(0, 1, 1, 1, 1, *shape, 5, 2, None, error, 256) == -1
    assert error.value == b"heads must be positive and divide the channel count C"
    assert forward(2, 1, 1, 1, 1, *shape, 4, 2, None, error, 256) == -1
    assert b"element type" in error.value
    assert forward(0, None, 1, 1, 1, *shape, 4, 2, None, error, 256) == -1
    assert b"null pointer" in error.value
    if not HAS_GPU:
        # Valid arguments on a machine without a GPU driver: the launch fails, reported, nothing
        # thrown; Python hears that the library cannot run here, so the op falls back.
        status = forward(0, 1, 1, 1, 1, *shape, 4, 2, None, error, 256)
        assert status > 0 and error.value.startswith(b"cudaError")
        assert isinstance(gda_cuda.launch_error(status, error.value.decode()), PluginBuildError)
    assert isinstance(gda_cuda.launch_error(-1, "heads must be positive"), ValueError)
    assert isinstance(gda_cuda.launch_error(700, "cudaErrorIllegalAddress: an illegal memory access"), RuntimeError)


@needs_toolkit
def test_cache_key_follows_sources_and_architectures(tmp_path, monkeypatch, built_library):
    library, cache, built_from = built_library
    monkeypatch.setenv("RVRT_PLUGINS_CACHE", str(cache))
    sources = tmp_path / "gda"
    shutil.copytree(built_from, sources)
    assert gda_cuda.library_path("80;90", sources) == library
    assert gda_cuda.library_path("80", sources) != library

    # An edited kernel source is a new library, built again.
    kernel = sources / "gda_kernel.cu"
    kernel.write_text(kernel.read_text() + "\n// edited\n")
    edited = gda_cuda.library_path("80", sources)
    assert edited not in (gda_cuda.library_path("80", built_from), library)
    assert gda_cuda.kernel_library("80", sources) == edited and edited.exists()
    assert gda_cuda.kernel_library("80;90", built_from) == library


def run_build_command(env_changes, *args):
    env = {**os.environ, "RVRT_PLUGINS_CACHE": "/nonexistent/never-written", **env_changes}
    env = {name: value for name, value in env.items() if value is not None}
    return subprocess.run([sys.executable, "-m", "rvrt_plugins.gda_cuda", "--cuda-architectures", "80", *args],
                          capture_output=True, text=True, env=env, cwd=REPOSITORY)


def test_cudacxx_pointing_nowhere_is_named():
    result = run_build_command({"CUDACXX": "/nowhere/bin/nvcc", "RVRT_GDA_CUDA_LIBRARY": None})
    assert result.returncode == 1
    assert result.stderr.startswith("error: CUDACXX=/nowhere/bin/nvcc is not an executable CUDA compiler")
    assert "Traceback" not in result.stderr and "PyTorch reference" in result.stderr


def test_missing_nvcc_says_where_it_was_looked_for(tmp_path, monkeypatch):
    # A PATH with python and cmake but no nvcc, and no CUDA root to fall back to.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("cmake",):
        if shutil.which(tool):
            (bin_dir / tool).symlink_to(shutil.which(tool))
    for name in ("CUDACXX", "CUDA_HOME", "CUDA_PATH", "RVRT_GDA_CUDA_LIBRARY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setattr(gda_cuda, "CUDA_ROOTS", (tmp_path / "cuda",))
    with pytest.raises(PluginBuildError, match=r"No CUDA compiler: nvcc is not on PATH.*install the CUDA toolkit"):
        gda_cuda.kernel_library("80")


def test_prebuilt_library_that_does_not_exist_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("RVRT_GDA_CUDA_LIBRARY", str(tmp_path / "missing.so"))
    with pytest.raises(PluginBuildError, match="RVRT_GDA_CUDA_LIBRARY=.*missing.so does not exist"):
        gda_cuda.kernel_library("80")


def test_build_without_a_gpu_asks_for_architectures(monkeypatch):
    if HAS_GPU:
        pytest.skip("this machine has a GPU: the build targets it")
    monkeypatch.delenv("RVRT_CUDA_ARCHITECTURES", raising=False)
    monkeypatch.delenv("RVRT_GDA_CUDA_LIBRARY", raising=False)
    with pytest.raises(PluginBuildError, match="No CUDA GPU: pass the architectures"):
        gda_cuda.kernel_library()


# -- input checks (no GPU needed: they come before any launch) -----------------------------------

def test_cpu_tensors_are_refused_saying_cuda_is_expected():
    q, kv, offset = inputs_as(2, 2, 24, 5, 7, 4, (3, 3))
    with pytest.raises(ValueError, match=r"expects CUDA tensors on one device, got q on cpu, kv on cpu"):
        gda_cuda.guided_deform_attn_cuda(q, kv, offset, 3, 3, 1, 4, 4, 2)


@pytest.mark.parametrize("change,message", [
    (lambda q, kv, off: (q, kv[:1], off), r"kv must be \(2, 2, 48, 5, 7\)"),
    (lambda q, kv, off: (q, kv, off[:, :-2]), r"offset must be \(4, 144, 5, 7\)"),
    (lambda q, kv, off: (q[:, 0], kv, off), r"q must be \(B\*clip, 1, C, H, W\), got \(4, 24, 5, 7\)"),
    (lambda q, kv, off: (q, kv, off.half()), r"all float32 or all float16, got float32, float32, float16"),
    (lambda q, kv, off: (q.double(), kv.double(), off.double()), r"all float32 or all float16, got float64"),
])
def test_bad_inputs_are_named(change, message):
    q, kv, offset = change(*inputs_as(2, 2, 24, 5, 7, 4, (3, 3)))
    with pytest.raises(ValueError, match=message):
        gda_cuda.guided_deform_attn_cuda(q, kv, offset, 3, 3, 1, 4, 4, 2)


# -- the float16 model's structure and a CPU float16 run -----------------------------------------

def test_float16_model_keeps_the_policys_float32_islands():
    model = half_precision(tiny_model("sr"))
    islands = [model.spynet, *(model.deform_align[b].conv_offset for b in BRANCHES),
               *(m for m in model.modules() if isinstance(m, nn.LayerNorm))]
    island_parameters = {id(p) for island in islands for p in island.parameters()}
    assert all(p.dtype == torch.float32 for island in islands for p in island.parameters())
    assert all(b.dtype == torch.float32 for b in model.spynet.buffers())
    others = [p for p in model.parameters() if id(p) not in island_parameters]
    assert others and all(p.dtype == torch.float16 for p in others)
    # SpyNet's normalisation constants kept exactly, not rounded through float16.
    assert model.spynet.mean.flatten().tolist() == torch.tensor([0.485, 0.456, 0.406]).tolist()

    other = tiny_model("sr")
    assert float32_islands(other, PrecisionPolicy(flow_path=False, fp32_ops=())) == [other.spynet]
    assert float32_islands(other, PrecisionPolicy(fp32_stages=("flow", "forward_2_first"), fp32_ops=(),
                                                  flow_path=False))[1:] == [other.backbone["forward_2"],
                                                                            other.deform_align["forward_2"]]
    with pytest.raises(ValueError, match="cannot keep ONNX op 'Softmax' float32"):
        float32_islands(model, PrecisionPolicy(fp32_ops=("Softmax",)))


def uint8(frames):
    return (frames.clamp(0, 1) * 255).round()


@pytest.mark.slow   # CPU float16 kernels are slow: ~50 s on 2 cores for 2 frames of a tiny model
def test_float16_model_restores_within_one_level_on_cpu():
    model = tiny_model("sr")
    lq = random_clip("sr", 2, 40, 40)
    with torch.no_grad():
        want = model(lq)
        got = half_precision(copy.deepcopy(model))(lq)
    assert got.dtype == torch.float32
    assert (uint8(got) - uint8(want)).abs().max().item() <= 1
    assert 0 < (got - want).abs().max().item() < 1e-2


def test_cuda_runtime_without_a_gpu_says_so():
    if HAS_GPU:
        pytest.skip("this machine has a GPU")
    with pytest.raises(CudaUnavailableError, match="no CUDA GPU: .*use --device cpu"):
        cuda_stages(tiny_model("sr"), "float16")
    with pytest.raises(ValueError, match="not cpu: pass --device cuda"):
        cuda_stages(tiny_model("sr"), "float32", device="cpu")
    with pytest.raises(ValueError, match="unknown precision 'bfloat16'"):
        cuda_stages(tiny_model("sr"), "bfloat16")


def test_gpu_benchmark_without_a_gpu_exits_with_a_message(tmp_path):
    if HAS_GPU:
        pytest.skip("this machine has a GPU")
    figures = tmp_path / "figures.json"
    result = subprocess.run([sys.executable, "benchmarks/gpu.py", "--json", str(figures)], capture_output=True,
                            text=True, cwd=REPOSITORY)
    # Status 1: the machine lacks something (README, "Exit status"); nothing measured, nothing written.
    assert result.returncode == 1
    assert result.stderr.startswith("benchmarks/gpu.py: no CUDA GPU") and "Traceback" not in result.stderr
    assert not figures.exists()
    # A bad option is status 2, found before the GPU is looked for.
    result = subprocess.run([sys.executable, "benchmarks/gpu.py", "--json", str(tmp_path / "missing" / "f.json")],
                            capture_output=True, text=True, cwd=REPOSITORY)
    assert result.returncode == 2
    assert result.stderr == f"benchmarks/gpu.py: --json {tmp_path / 'missing' / 'f.json'}: the folder " \
                            f"{tmp_path / 'missing'} does not exist\n"


# -- on a GPU ------------------------------------------------------------------------------------

CASES = [
    # batch, clip, channels C, H, W, heads, groups, (kernel_h, kernel_w)
    (1, 2, 288, 16, 24, 12, 12, (3, 3)),   # RVRT SR widths
    (1, 2, 384, 11, 9, 12, 12, (3, 3)),    # deblur/denoise widths, odd sizes
    (2, 2, 48, 9, 13, 2, 12, (3, 3)),
    (3, 1, 16, 7, 5, 4, 8, (3, 3)),
    (1, 2, 128, 6, 40, 2, 4, (1, 3)),      # head dim 64, rows wider than a warp
    (1, 2, 24, 1, 1, 3, 6, (3, 3)),        # a single pixel: every sample but the centre leaves it
]
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3}


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("batch,clip,channels,height,width,heads,groups,kernel", CASES)
@pytest.mark.parametrize("offset_scale", [3.0, 40.0])
def test_kernel_matches_reference(dtype, batch, clip, channels, height, width, heads, groups, kernel, offset_scale):
    kh, kw = kernel
    q, kv, offset = inputs_as(batch, clip, channels, height, width, groups, kernel, dtype, offset_scale)
    got = gda_cuda.guided_deform_attn_cuda(q.cuda(), kv.cuda(), offset.cuda(), kh, kw, kh // 2, heads, groups, clip)
    want = guided_deform_attn_reference(q.double(), kv.double(), offset.double(), kh, kw, kh // 2, heads, groups,
                                        clip)
    assert got.dtype == dtype and got.device.type == "cuda"
    assert (got.cpu().double() - want).abs().max().item() <= TOLERANCE[dtype]


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_op_on_cuda_runs_the_kernel_on_the_current_stream(dtype, monkeypatch):
    monkeypatch.delenv("RVRT_GDA", raising=False)
    q, kv, offset = inputs_as(2, 2, 48, 9, 13, 12, (3, 3), dtype, device="cuda")
    args = (q, kv, offset, 3, 3, 1, 2, 12, 2)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # a fallback to the reference would warn
        with torch.cuda.stream(stream):
            through_op = guided_deform_attn(*args)
        stream.synchronize()
    assert torch.equal(through_op, gda_cuda.guided_deform_attn_cuda(*args))
    # Non-contiguous inputs are made contiguous.
    strided = gda_cuda.guided_deform_attn_cuda(q.transpose(3, 4).contiguous().transpose(3, 4), *args[1:])
    assert torch.equal(strided, through_op)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("kind", ["sr", "denoise"])
def test_float16_runtime_within_one_level_of_float32(kind):
    model = tiny_model(kind)
    lq = random_clip(kind, 6).cuda()
    with torch.no_grad():
        single = cuda_stages(copy.deepcopy(model), "float32")
        half = cuda_stages(copy.deepcopy(model), "float16")
        assert isinstance(half, CudaStages)
        want = run_recurrent(single, lq)
        got = run_recurrent(half, lq)
        on_cpu = model(lq.cpu())
    assert got.dtype == torch.float32
    assert (uint8(got) - uint8(want)).abs().max().item() <= 1
    assert (want.cpu() - on_cpu).abs().max().item() <= FLOAT32_TOLERANCE
