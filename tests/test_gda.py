"""The PyTorch GDA against a direct loop transliteration of shared/GDA.md, in float64."""

import numpy as np
import pytest
import torch

from conftest import gda_inputs
from gda_oracle import gda_loop
from rvrt.gda import guided_deform_attn, guided_deform_attn_reference

CASES = [
    # batch, clip, channels C, H, W, heads, groups, kernel
    (1, 2, 12, 5, 7, 3, 6, (3, 3)),
    (2, 1, 8, 4, 3, 2, 4, (3, 3)),
    (1, 2, 24, 6, 1, 12, 12, (3, 3)),
    (1, 2, 16, 3, 5, 4, 8, (1, 3)),
]


@pytest.mark.parametrize("batch,clip,channels,height,width,heads,groups,kernel", CASES)
def test_gda_matches_loop_oracle(batch, clip, channels, height, width, heads, groups, kernel):
    kh, kw = kernel
    q, kv, offset = gda_inputs(batch, clip, channels, height, width, groups, kernel, dtype=torch.float64)
    got = guided_deform_attn(q, kv, offset, kh, kw, kh // 2, heads, groups, clip).numpy()
    want = gda_loop(q.numpy(), kv.numpy(), offset.numpy(), kh, kw, kh // 2, heads, groups, clip)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_offsets_really_leave_the_image():
    """Guard for the test above: with offsets of std 3 px, a good share of samples falls outside."""
    gen = torch.Generator().manual_seed(0)
    offset = 3.0 * torch.randn(2, 2 * 6 * 9 * 2, 5, 7, generator=gen)
    dy = offset.view(2, 2, 6, 9, 2, 5, 7)[:, :, :, :, 0]
    y = torch.arange(5).view(1, 1, 1, 1, 5, 1) - 1 + torch.arange(3).repeat_interleave(3).view(1, 1, 1, 9, 1, 1) + dy
    outside = ((y <= -1) | (y >= 5)).float().mean().item()
    assert outside > 0.2


def test_gda_rejects_inconsistent_shapes():
    q = torch.zeros(2, 1, 12, 4, 4)
    with pytest.raises(ValueError, match="offset must be"):
        guided_deform_attn_reference(q, torch.zeros(1, 2, 24, 4, 4), torch.zeros(2, 10, 4, 4), 3, 3, 1, 3, 6, 2)
    with pytest.raises(ValueError, match="kv must be"):
        guided_deform_attn_reference(q, torch.zeros(1, 2, 12, 4, 4), torch.zeros(2, 216, 4, 4), 3, 3, 1, 3, 6, 2)


def test_gda_custom_op_is_one_opaque_node():
    """Exporters see torch.ops.rvrt.guided_deform_attn, not its decomposition."""
    class UsesGda(torch.nn.Module):
        def forward(self, q, kv, offset):
            return guided_deform_attn(q, kv, offset, 3, 3, 1, 3, 6, 2)

    args = (torch.rand(2, 1, 12, 4, 4), torch.rand(1, 2, 24, 4, 4), torch.rand(2, 216, 4, 4))
    graph = torch.export.export(UsesGda(), args).graph
    targets = [str(node.target) for node in graph.nodes if node.op == "call_function"]
    assert targets == ["rvrt.guided_deform_attn.default"]
