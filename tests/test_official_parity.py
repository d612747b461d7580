"""Eager output == the official network's, when an official checkout is at $RVRT_OFFICIAL_DIR.

The official code cannot be bundled or downloaded here; these tests skip with that reason
elsewhere. The official GDA (a CUDA extension) is replaced by this project's reference GDA,
which test_gda.py checks against the loop transliteration of shared/GDA.md.
"""

from argparse import Namespace

import pytest
import torch

from official import OFFICIAL_DIR, official_network, official_test_video, randomize_
from rvrt import RVRT, Tiling, get_task, restore_tiled

pytestmark = pytest.mark.skipif(not OFFICIAL_DIR, reason="set RVRT_OFFICIAL_DIR to a checkout of "
                                                         "github.com/JingyunLiang/RVRT to compare against it")


@pytest.mark.slow
@pytest.mark.parametrize("task,size", [("sr", 64), ("deblur-dvd", 160), ("denoise", 160)])
def test_full_size_forward_equals_official(task, size):
    config = get_task(task).config
    official = official_network(config).eval()
    randomize_(official)
    ours = RVRT(config).eval()
    ours.load_state_dict(official.state_dict())
    lq = torch.rand(1, 4, config.in_channels, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (official(lq) - ours(lq)).abs().max().item()
    assert diff <= 2e-4


def test_tiling_equals_official_test_video():
    config = get_task("sr").config.tiny()
    official = official_network(config).eval()
    randomize_(official)
    ours = RVRT(config).eval()
    ours.load_state_dict(official.state_dict())
    lq = torch.rand(1, 8, 3, 64, 88, generator=torch.Generator().manual_seed(0))
    args = Namespace(tile=[6, 48, 48], tile_overlap=[2, 16, 16], scale=4, window_size=[2, 8, 8],
                     nonblind_denoising=False)
    with torch.no_grad():
        want = official_test_video()(lq, official, args)
        got = restore_tiled(ours, lq, config, Tiling(window=6, tile=48, window_overlap=2, tile_overlap=16))
    assert (want - got).abs().max().item() <= 2e-4
