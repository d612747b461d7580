"""The GDA CPU twin (the TensorRT plugin's arithmetic from plugins/gda/gda_math.h, host-compiled)
against the PyTorch reference rvrt.gda and the loop oracle of shared/GDA.md."""

import numpy as np
import pytest
import torch

from conftest import gda_inputs
from gda_oracle import gda_loop
from rvrt.gda import guided_deform_attn_reference
from rvrt_plugins import build
from rvrt_plugins.gda_cpu import guided_deform_attn_twin

FP32_TOLERANCE = 1e-5

CASES = [
    # batch, clip, channels C, H, W, heads, groups, (kernel_h, kernel_w)
    (1, 2, 12, 5, 7, 3, 6, (3, 3)),
    (2, 1, 8, 4, 3, 2, 4, (3, 3)),
    (1, 2, 24, 6, 1, 12, 12, (3, 3)),
    (1, 2, 16, 3, 5, 4, 8, (1, 3)),
    (2, 2, 48, 7, 9, 2, 12, (3, 3)),     # head dim 24 as in the SR models, 12 groups
    (1, 2, 64, 6, 4, 2, 16, (3, 3)),     # head dim 32 as in deblur/denoise
    (1, 1, 12, 4, 6, 1, 6, (3, 3)),      # one head spanning three key groups
    (1, 2, 128, 3, 4, 2, 4, (3, 3)),     # the largest supported head dim, 64
    (1, 2, 20, 1, 1, 4, 10, (5, 3)),     # 1x1 image: every sample but the centre is outside
]


def run_both(q, kv, offset, kernel, heads, groups, clip, reference_dtype):
    kh, kw = kernel
    args = (kh, kw, kh // 2, heads, groups, clip)
    got = guided_deform_attn_twin(q, kv, offset, *args)
    want = guided_deform_attn_reference(q.to(reference_dtype), kv.to(reference_dtype), offset.to(reference_dtype),
                                        *args)
    return got, want


@pytest.mark.parametrize("batch,clip,channels,height,width,heads,groups,kernel", CASES)
@pytest.mark.parametrize("reference_dtype", [torch.float32, torch.float64])
def test_twin_matches_reference_fp32(batch, clip, channels, height, width, heads, groups, kernel, reference_dtype):
    q, kv, offset = gda_inputs(batch, clip, channels, height, width, groups, kernel)
    got, want = run_both(q, kv, offset, kernel, heads, groups, clip, reference_dtype)
    assert got.dtype == torch.float32 and got.shape == q.shape
    assert (got.double() - want.double()).abs().max().item() <= FP32_TOLERANCE


@pytest.mark.parametrize("batch,clip,channels,height,width,heads,groups,kernel", CASES[:6])
def test_twin_matches_reference_on_fp16_rounded_inputs(batch, clip, channels, height, width, heads, groups, kernel):
    """What the fp16 plugin sees: inputs representable in float16, fp32 arithmetic inside."""
    q, kv, offset = (t.half().float() for t in gda_inputs(batch, clip, channels, height, width, groups, kernel,
                                                              seed=1))
    got, want = run_both(q, kv, offset, kernel, heads, groups, clip, torch.float64)
    assert (got.double() - want).abs().max().item() <= FP32_TOLERANCE


def test_twin_matches_loop_oracle():
    q, kv, offset = gda_inputs(1, 2, 12, 4, 5, 6, (3, 3), seed=2)
    got = guided_deform_attn_twin(q, kv, offset, 3, 3, 1, 3, 6, 2).numpy()
    want = gda_loop(q.double().numpy(), kv.double().numpy(), offset.double().numpy(), 3, 3, 1, 3, 6, 2)
    np.testing.assert_allclose(got, want, rtol=0, atol=FP32_TOLERANCE)


@pytest.mark.parametrize("offset_value", [1e9, -1e9, 1.0e4])
def test_samples_far_outside_the_image_contribute_zero(offset_value):
    """Huge offsets must not overflow the corner indices; all values sampled are zero."""
    q, kv, offset = gda_inputs(1, 2, 12, 5, 7, 6, (3, 3), seed=3)
    offset = torch.full_like(offset, offset_value)
    got, want = run_both(q, kv, offset, (3, 3), 3, 6, 2, torch.float64)
    assert torch.count_nonzero(got) == 0
    assert (got.double() - want).abs().max().item() == 0


def test_samples_on_the_image_border():
    """Positions exactly at -1, -0.5, H-1 and H-0.5: the zero-corner rule at its edges."""
    q, kv, offset = gda_inputs(1, 1, 8, 4, 4, 4, (3, 3), seed=4)
    edges = torch.tensor([-1.0, -0.5, 0.0, 0.5])
    offset = edges[torch.randint(0, 4, offset.shape, generator=torch.Generator().manual_seed(5))]
    got, want = run_both(q, kv, offset, (3, 3), 2, 4, 1, torch.float64)
    assert (got.double() - want).abs().max().item() <= FP32_TOLERANCE


@pytest.mark.parametrize("channels,heads,groups,message", [
    (12, 5, 6, "heads must be positive and divide"),
    (12, 3, 5, "groups must be positive and divide"),
    (130, 2, 10, "head dimension C / heads exceeds 64"),
])
def test_twin_reports_unsupported_shapes(channels, heads, groups, message):
    q = torch.zeros(2, 1, channels, 2, 2)
    kv = torch.zeros(1, 2, 2 * channels, 2, 2)
    offset = torch.zeros(2, 2 * groups * 9 * 2, 2, 2)
    with pytest.raises(ValueError, match=message):
        guided_deform_attn_twin(q, kv, offset, 3, 3, 1, heads, groups, 2)


def test_twin_rejects_mismatched_tensor_shapes():
    with pytest.raises(ValueError, match="offset must be"):
        guided_deform_attn_twin(torch.zeros(2, 1, 12, 4, 4), torch.zeros(1, 2, 24, 4, 4), torch.zeros(2, 10, 4, 4),
                               3, 3, 1, 3, 6, 2)


def test_twin_builds_from_sources_into_an_empty_cache(tmp_path, monkeypatch):
    """A fresh clone has no prebuilt library: the helper compiles it, then reuses it."""
    monkeypatch.setenv("RVRT_PLUGINS_CACHE", str(tmp_path))
    first = build.cpu_library()
    assert first.parent == tmp_path and first.exists()
    stamp = first.stat().st_mtime_ns
    assert build.cpu_library() == first and first.stat().st_mtime_ns == stamp
