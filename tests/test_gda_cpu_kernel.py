"""The fused multi-threaded GDA CPU kernel (plugins/gda/gda_cpu.cpp through rvrt_plugins.gda_cpu)
against the PyTorch reference, its numpy entries (NCHW and channels-last), and
torch.ops.rvrt.guided_deform_attn on the CPU."""

import functools
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from conftest import gda_inputs
from rvrt.config import DEBLUR, SR
from rvrt.gda import guided_deform_attn, guided_deform_attn_reference
from rvrt_plugins import build
from rvrt_plugins.gda_cpu import gda_cpu_numpy, gda_cpu_numpy_channels_last, guided_deform_attn_cpu

FP32_TOLERANCE = 1e-5


def gda_channels(config):
    """C of the GDA inside a model: twice the embedding width."""
    return 2 * config.embed_dims[1]


ARCHITECTURES = {
    # name: (C, heads, groups) as the models call GDA
    "sr": (gda_channels(SR), SR.attention_heads, SR.deformable_groups),                 # 288, head dim 24
    "deblur-denoise": (gda_channels(DEBLUR), DEBLUR.attention_heads, DEBLUR.deformable_groups),   # 384, dim 32
    "tiny": (gda_channels(SR.tiny()), SR.attention_heads, SR.deformable_groups),       # 48, head dim 4
}

OTHER_SHAPES = [
    # C, heads, groups, (kernel_h, kernel_w): the kernel's general path
    (12, 1, 6, (3, 3)),      # one head spanning three key groups
    (12, 3, 3, (3, 3)),      # odd groups: group 1 holds both keys and values
    (160, 2, 4, (3, 3)),     # head dim 80, beyond the CUDA kernel's 64
    (40, 5, 10, (1, 3)),     # head dim 8, one vector per run, one head per group
    (48, 6, 4, (3, 3)),      # three heads per group: a pair, then one
    (64, 4, 4, (3, 3)),      # head dim 16, two heads per group
    (20, 4, 10, (5, 3)),
]


# Offsets of std 4 px: on 7x13 images many samples fall outside.
random_inputs = functools.partial(gda_inputs, offset_std=4.0)


def max_error(got, want):
    return (got.double() - want.double()).abs().max().item()


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
@pytest.mark.parametrize("height,width", [(7, 13), (16, 9)])
def test_kernel_matches_reference_for_every_architecture(architecture, height, width):
    channels, heads, groups = ARCHITECTURES[architecture]
    q, kv, offset = random_inputs(2, 2, channels, height, width, groups, (3, 3))
    got = guided_deform_attn_cpu(q, kv, offset, 3, 3, 1, heads, groups, 2)
    want = guided_deform_attn_reference(q, kv, offset, 3, 3, 1, heads, groups, 2)
    assert got.dtype == torch.float32 and got.shape == q.shape
    assert max_error(got, want) <= FP32_TOLERANCE
    assert max_error(got, guided_deform_attn_reference(q.double(), kv.double(), offset.double(), 3, 3, 1, heads,
                                                       groups, 2)) <= FP32_TOLERANCE


@pytest.mark.parametrize("channels,heads,groups,kernel", OTHER_SHAPES)
def test_kernel_matches_reference_for_other_shapes(channels, heads, groups, kernel):
    kh, kw = kernel
    q, kv, offset = random_inputs(2, 2, channels, 5, 7, groups, kernel, seed=1)
    got = guided_deform_attn_cpu(q, kv, offset, kh, kw, kh // 2, heads, groups, 2)
    want = guided_deform_attn_reference(q.double(), kv.double(), offset.double(), kh, kw, kh // 2, heads, groups, 2)
    assert max_error(got, want) <= FP32_TOLERANCE


def test_offsets_leave_the_image():
    """Guard for the tests above: with offsets of std 4 px on 7x13, many samples are outside."""
    _, _, offset = random_inputs(2, 2, 48, 7, 13, 12, (3, 3))
    position_y = offset.view(4, 2, 12, 9, 2, 7, 13)[:, :, :, :, 0] + torch.arange(7).view(7, 1)
    assert ((position_y <= -1) | (position_y >= 7)).float().mean().item() > 0.2


@pytest.mark.parametrize("offset_value", [1e9, -1e9, float("nan")])
def test_samples_far_outside_contribute_zero(offset_value):
    channels, heads, groups = ARCHITECTURES["sr"]
    q, kv, offset = random_inputs(1, 2, channels, 4, 5, groups, (3, 3))
    offset = torch.full_like(offset, offset_value)
    got = guided_deform_attn_cpu(q, kv, offset, 3, 3, 1, heads, groups, 2)
    assert torch.count_nonzero(got) == 0


def test_clip_one_and_three():
    for clip in (1, 3):
        q, kv, offset = random_inputs(2, clip, 24, 6, 5, 6, (3, 3), seed=clip)
        got = guided_deform_attn_cpu(q, kv, offset, 3, 3, 1, 3, 6, clip)
        want = guided_deform_attn_reference(q.double(), kv.double(), offset.double(), 3, 3, 1, 3, 6, clip)
        assert max_error(got, want) <= FP32_TOLERANCE


def test_thread_counts_give_identical_results():
    channels, heads, groups = ARCHITECTURES["sr"]
    q, kv, offset = random_inputs(2, 2, channels, 9, 11, groups, (3, 3), seed=2)
    one = guided_deform_attn_cpu(q, kv, offset, 3, 3, 1, heads, groups, 2, threads=1)
    for threads in (2, 3, 64):
        assert torch.equal(one, guided_deform_attn_cpu(q, kv, offset, 3, 3, 1, heads, groups, 2, threads=threads))


def test_numpy_entry_equals_torch_entry_and_fills_out():
    q, kv, offset = random_inputs(2, 2, 48, 7, 13, 12, (3, 3), seed=3)
    attributes = dict(kernel_h=3, kernel_w=3, padding=1, heads=12, groups=12, clip=2)
    want = guided_deform_attn_cpu(q, kv, offset, **attributes).numpy()
    got = gda_cpu_numpy(q.numpy(), kv.numpy(), offset.numpy(), **attributes)
    assert got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_array_equal(got, want)
    out = np.full(q.shape, np.nan, dtype=np.float32)
    assert gda_cpu_numpy(q.numpy(), kv.numpy(), offset.numpy(), **attributes, out=out, threads=2) is out
    np.testing.assert_array_equal(out, want)
    # Other dtypes and layouts are converted first.
    transposed = np.ascontiguousarray(kv.numpy().swapaxes(3, 4)).swapaxes(3, 4)
    assert not transposed.flags.c_contiguous
    got = gda_cpu_numpy(q.numpy().astype(np.float64), transposed, offset.numpy(), **attributes)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("out,message", [
    (np.zeros((2, 1, 48, 7, 13), dtype=np.float64), "out must be a writeable float32"),
    (np.zeros((2, 1, 48, 7, 12), dtype=np.float32), "out must be a writeable float32"),
    (np.zeros((2, 1, 48, 13, 7), dtype=np.float32).swapaxes(3, 4), "out must be a writeable float32"),
])
def test_numpy_entry_rejects_bad_out(out, message):
    q, kv, offset = (t.numpy() for t in random_inputs(1, 2, 48, 7, 13, 12, (3, 3)))
    with pytest.raises(ValueError, match=message):
        gda_cpu_numpy(q, kv, offset, kernel_h=3, kernel_w=3, padding=1, heads=12, groups=12, clip=2, out=out)


def test_numpy_entry_rejects_out_overlapping_an_input():
    q, kv, offset = (t.numpy() for t in random_inputs(1, 2, 48, 7, 13, 12, (3, 3)))
    with pytest.raises(ValueError, match="must not overlap"):
        gda_cpu_numpy(q, kv, offset, kernel_h=3, kernel_w=3, padding=1, heads=12, groups=12, clip=2, out=q)


@pytest.mark.parametrize("shapes,heads,groups,message", [
    (((2, 48, 7, 13), (1, 2, 96, 7, 13), (2, 432, 7, 13)), 12, 12, r"q must be \(B\*clip, 1, C, H, W\)"),
    (((3, 1, 48, 7, 13), (1, 2, 96, 7, 13), (3, 432, 7, 13)), 12, 12, "must be a multiple of clip=2"),
    (((2, 1, 48, 7, 13), (1, 2, 48, 7, 13), (2, 432, 7, 13)), 12, 12, r"kv must be \(1, 2, 96, 7, 13\)"),
    (((2, 1, 48, 7, 13), (1, 2, 96, 7, 13), (2, 430, 7, 13)), 12, 12, r"offset must be \(2, 432, 7, 13\)"),
    (((2, 1, 48, 7, 13), (1, 2, 96, 7, 13), (2, 360, 7, 13)), 5, 10, "heads must be positive and divide"),
    (((2, 1, 48, 7, 13), (1, 2, 96, 7, 13), (2, 252, 7, 13)), 12, 7, "groups must be positive and divide"),
])
def test_bad_shapes_raise_value_error(shapes, heads, groups, message):
    q, kv, offset = (torch.zeros(shape) for shape in shapes)
    with pytest.raises(ValueError, match=message):
        guided_deform_attn_cpu(q, kv, offset, 3, 3, 1, heads, groups, 2)
    with pytest.raises(ValueError, match=message):
        gda_cpu_numpy(q.numpy(), kv.numpy(), offset.numpy(), kernel_h=3, kernel_w=3, padding=1, heads=heads,
                      groups=groups, clip=2)


def test_torch_op_on_cpu_runs_the_fused_kernel(monkeypatch):
    monkeypatch.delenv("RVRT_GDA", raising=False)
    channels, heads, groups = ARCHITECTURES["sr"]
    q, kv, offset = random_inputs(2, 2, channels, 7, 13, groups, (3, 3), seed=4)
    got = guided_deform_attn(q, kv, offset, 3, 3, 1, heads, groups, 2)
    reference = guided_deform_attn_reference(q, kv, offset, 3, 3, 1, heads, groups, 2)
    assert torch.equal(got, guided_deform_attn_cpu(q, kv, offset, 3, 3, 1, heads, groups, 2))
    assert not torch.equal(got, reference)      # different summation order: not the reference's bits
    assert max_error(got, reference) <= FP32_TOLERANCE


def test_torch_op_runs_the_reference_when_asked_or_for_other_dtypes(monkeypatch):
    q, kv, offset = random_inputs(2, 2, 48, 7, 13, 12, (3, 3), seed=5)
    monkeypatch.setenv("RVRT_GDA", "reference")
    assert torch.equal(guided_deform_attn(q, kv, offset, 3, 3, 1, 12, 12, 2),
                       guided_deform_attn_reference(q, kv, offset, 3, 3, 1, 12, 12, 2))
    monkeypatch.delenv("RVRT_GDA")
    q, kv, offset = q.double(), kv.double(), offset.double()
    assert torch.equal(guided_deform_attn(q, kv, offset, 3, 3, 1, 12, 12, 2),
                       guided_deform_attn_reference(q, kv, offset, 3, 3, 1, 12, 12, 2))


def test_torch_op_rejects_unknown_implementation(monkeypatch):
    monkeypatch.setenv("RVRT_GDA", "fast")
    with pytest.raises(ValueError, match="RVRT_GDA='fast' is not one of native, reference"):
        guided_deform_attn(*random_inputs(1, 2, 48, 4, 4, 12, (3, 3)), 3, 3, 1, 12, 12, 2)


def test_without_a_compiler_the_op_warns_once_and_runs_the_reference(tmp_path):
    """A fresh machine whose compiler is missing: one warning naming why, reference results."""
    script = textwrap.dedent("""
        import warnings
        import torch
        from rvrt.gda import guided_deform_attn, guided_deform_attn_reference
        gen = torch.Generator().manual_seed(0)
        q = torch.randn(2, 1, 48, 5, 6, generator=gen)
        kv = torch.randn(1, 2, 96, 5, 6, generator=gen)
        offset = 3 * torch.randn(2, 432, 5, 6, generator=gen)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            outputs = [guided_deform_attn(q, kv, offset, 3, 3, 1, 12, 12, 2) for _ in range(3)]
        assert all(torch.equal(o, guided_deform_attn_reference(q, kv, offset, 3, 3, 1, 12, 12, 2)) for o in outputs)
        messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
        print(len(messages), messages[0])
    """)
    environment = {**os.environ, "CXX": str(tmp_path / "no-such-compiler"), "RVRT_PLUGINS_CACHE": str(tmp_path)}
    environment.pop("RVRT_GDA", None)
    result = subprocess.run([sys.executable, "-c", script], env=environment, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("1 GDA: the fused CPU kernel is unavailable, using the PyTorch reference")
    assert f"CXX={tmp_path / 'no-such-compiler'} was not found" in result.stdout
    assert list(tmp_path.iterdir()) == []


def test_library_cache_is_keyed_by_cpu(monkeypatch):
    """A library built with -march=native for one CPU is never picked up on another."""
    assert "-march=native" in build.CPU_FLAGS
    if sys.platform == "linux":
        assert "model name=" in build.cpu_identity() or "CPU part=" in build.cpu_identity()
    compiler = build.host_compiler()
    here = build.cpu_library_path(compiler)
    monkeypatch.setattr(build, "cpu_identity", lambda: "x86_64\nmodel name=another CPU\nflags=sse2")
    assert build.cpu_library_path(compiler) != here


def test_samples_exactly_on_the_image_border():
    """Positions exactly at -1, -0.5, 0, H-1 and H-0.5: the zero-corner rule at its edges, in the
    kernel's eight-pixel taps as in the reference."""
    channels, heads, groups = ARCHITECTURES["deblur-denoise"]
    q, kv, offset = random_inputs(1, 2, channels, 4, 11, groups, (3, 3), seed=6)
    edges = torch.tensor([-2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5])
    offset = edges[torch.randint(0, len(edges), offset.shape, generator=torch.Generator().manual_seed(7))]
    got = guided_deform_attn_cpu(q, kv, offset, 3, 3, 1, heads, groups, 2)
    want = guided_deform_attn_reference(q.double(), kv.double(), offset.double(), 3, 3, 1, heads, groups, 2)
    assert max_error(got, want) <= FP32_TOLERANCE


def test_tiny_model_forward_with_the_kernel_matches_the_reference(monkeypatch):
    """The network's GDA calls go through the kernel on CPU; the output stays the reference's."""
    from conftest import random_clip, tiny_model

    model = tiny_model("sr").eval()
    lq = random_clip("sr", 4)
    monkeypatch.setenv("RVRT_GDA", "reference")
    with torch.no_grad():
        want = model(lq)
    monkeypatch.delenv("RVRT_GDA")
    with torch.no_grad():
        got = model(lq)
    assert not torch.equal(got, want)
    assert max_error(got, want) <= 1e-4


def channels_last(q, kv):
    """The channels-last entry's q, k, v for NCHW q and kv: C-contiguous (B*clip, H, W, C) arrays."""
    frames, _, channels, height, width = q.shape
    kv = kv.reshape(frames, 2 * channels, height, width)
    return tuple(np.ascontiguousarray(array.transpose(0, 2, 3, 1))
                 for array in (q[:, 0], kv[:, :channels], kv[:, channels:]))


def assert_channels_last_equals_nchw(q, kv, offset, threads=2, **attributes):
    want = gda_cpu_numpy(q, kv, offset, **attributes, threads=threads)
    got = gda_cpu_numpy_channels_last(*channels_last(q, kv), offset, **attributes, threads=threads)
    assert got.dtype == np.float32 and got.flags.c_contiguous and got.shape == channels_last(q, kv)[0].shape
    assert np.array_equal(got, want[:, 0].transpose(0, 2, 3, 1))
    return got


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
@pytest.mark.parametrize("clip", [1, 2, 3])
def test_channels_last_entry_equals_nchw_entry_bit_for_bit(architecture, clip):
    """Same arithmetic, only the layout differs; odd 13x21 with offsets leaving the image."""
    channels, heads, groups = ARCHITECTURES[architecture]
    q, kv, offset = (t.numpy() for t in random_inputs(2, clip, channels, 13, 21, groups, (3, 3), seed=10 + clip))
    assert_channels_last_equals_nchw(q, kv, offset, kernel_h=3, kernel_w=3, padding=1, heads=heads, groups=groups,
                                     clip=clip)


@pytest.mark.parametrize("channels,heads,groups", [
    (12, 3, 3),     # group channels 8: group 1 holds keys 8..11 and values 0..3
    (18, 2, 9),     # group channels 4: group 4 holds keys 16, 17 and values 0, 1
    (15, 3, 5),     # group channels 6, head dim 5 (the scalar path): group 2 holds keys 12..14, values 0..2
])
def test_channels_last_entry_with_groups_straddling_keys_and_values(channels, heads, groups):
    """A group straddles keys and values exactly when the group count is odd (2C / G does not divide C):
    it is copied from k and v in two runs."""
    q, kv, offset = (t.numpy() for t in random_inputs(2, 2, channels, 5, 11, groups, (3, 3), seed=20))
    attributes = dict(kernel_h=3, kernel_w=3, padding=1, heads=heads, groups=groups, clip=2)
    got = assert_channels_last_equals_nchw(q, kv, offset, **attributes)
    want = guided_deform_attn_reference(*(torch.from_numpy(a).double() for a in (q, kv, offset)), 3, 3, 1, heads,
                                        groups, 2)
    assert max_error(torch.from_numpy(got), want[:, 0].permute(0, 2, 3, 1)) <= FP32_TOLERANCE


def test_channels_last_thread_counts_give_identical_results_and_fill_out():
    channels, heads, groups = ARCHITECTURES["sr"]
    q, kv, offset = (t.numpy() for t in random_inputs(2, 2, channels, 9, 11, groups, (3, 3), seed=21))
    q, k, v = channels_last(q, kv)
    attributes = dict(kernel_h=3, kernel_w=3, padding=1, heads=heads, groups=groups, clip=2)
    one = gda_cpu_numpy_channels_last(q, k, v, offset, **attributes, threads=1)
    out = np.full(q.shape, np.nan, dtype=np.float32)
    assert gda_cpu_numpy_channels_last(q, k, v, offset, **attributes, threads=3, out=out) is out
    assert np.array_equal(out, one)
    # Other dtypes and layouts are converted first.
    strided = np.ascontiguousarray(k.swapaxes(1, 2)).swapaxes(1, 2)
    assert not strided.flags.c_contiguous
    assert np.array_equal(gda_cpu_numpy_channels_last(q.astype(np.float64), strided, v, offset, **attributes), one)
    with pytest.raises(ValueError, match="out must be a writeable float32"):
        gda_cpu_numpy_channels_last(q, k, v, offset, **attributes, out=out.astype(np.float64))
    with pytest.raises(ValueError, match="out must not overlap q, k, v or offset"):
        gda_cpu_numpy_channels_last(q, k, v, offset, **attributes, out=v)


@pytest.mark.parametrize("shapes,heads,groups,message", [
    (((2, 1, 7, 13, 48), (2, 7, 13, 48), (2, 7, 13, 48), (2, 432, 7, 13)), 12, 12,
     r"q must be \(B\*clip, H, W, C\)"),
    (((3, 7, 13, 48), (3, 7, 13, 48), (3, 7, 13, 48), (3, 432, 7, 13)), 12, 12, "must be a multiple of clip=2"),
    (((2, 7, 13, 48), (2, 7, 13, 96), (2, 7, 13, 48), (2, 432, 7, 13)), 12, 12, r"k must be \(2, 7, 13, 48\)"),
    (((2, 7, 13, 48), (2, 7, 13, 48), (2, 13, 7, 48), (2, 432, 7, 13)), 12, 12, r"v must be \(2, 7, 13, 48\)"),
    (((2, 7, 13, 48), (2, 7, 13, 48), (2, 7, 13, 48), (2, 432, 13, 7)), 12, 12,
     r"offset must be \(2, 432, 7, 13\)"),
    (((2, 7, 13, 48), (2, 7, 13, 48), (2, 7, 13, 48), (2, 360, 7, 13)), 5, 10, "heads must be positive and divide"),
    (((2, 7, 13, 48), (2, 7, 13, 48), (2, 7, 13, 48), (2, 252, 7, 13)), 12, 7, "groups must be positive and divide"),
])
def test_channels_last_bad_shapes_raise_value_error(shapes, heads, groups, message):
    q, k, v, offset = (np.zeros(shape, dtype=np.float32) for shape in shapes)
    with pytest.raises(ValueError, match=message):
        gda_cpu_numpy_channels_last(q, k, v, offset, kernel_h=3, kernel_w=3, padding=1, heads=heads, groups=groups,
                                    clip=2)
