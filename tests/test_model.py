"""The model: official checkpoint format, clear errors, the stage driver, odd frame counts."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import random_clip, tiny_model
from rvrt import BRANCHES, TASKS, CheckpointError, EagerStages, build_model, get_task, run_recurrent
from rvrt.model import RVRT

OFFICIAL_SHAPES = json.loads((Path(__file__).parent / "data" / "official_state_dict_shapes.json").read_text())


@pytest.mark.parametrize("kind,task", [("sr", "sr"), ("deblur", "deblur-gopro"), ("denoise", "denoise")])
def test_parameter_names_and_shapes_are_the_official_ones(kind, task):
    """Recorded from the official network (tests/official.py); every published file loads strictly."""
    ours = {k: list(v.shape) for k, v in RVRT(get_task(task).config).state_dict().items()}
    assert ours == OFFICIAL_SHAPES[kind]


@pytest.fixture(scope="module")
def full_size_state_dicts():
    torch.manual_seed(0)
    return {task.id: RVRT(task.config).state_dict() for task in TASKS.values()}


@pytest.mark.parametrize("task_id", list(TASKS))
@pytest.mark.parametrize("wrapped", [True, False], ids=["params", "bare"])
def test_official_format_checkpoints_load_for_all_six_tasks(task_id, wrapped, full_size_state_dicts, tmp_path):
    state = full_size_state_dicts[task_id]
    path = tmp_path / f"{task_id}.pth"
    torch.save({"params": state} if wrapped else state, path)
    model = build_model(task_id, path)
    assert not model.training
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_short_names_and_ids_name_the_same_task():
    assert {t.short for t in TASKS.values()} == {"sr", "sr-vimeo", "sr-bd", "deblur-dvd", "deblur-gopro", "denoise"}
    for task in TASKS.values():
        assert get_task(task.short) is task and get_task(task.id) is task
    with pytest.raises(ValueError, match="unknown task 'upscale'.*sr-vimeo"):
        get_task("upscale")


def test_no_checkpoint_needs_explicit_random_weights():
    with pytest.raises(ValueError, match="no checkpoint given for task 'sr'.*random_weights=True"):
        build_model("sr")


def test_checkpoint_of_another_architecture_names_both(tmp_path, full_size_state_dicts):
    path = tmp_path / "weights.pth"
    torch.save({"params": full_size_state_dicts["004_RVRT_videodeblurring_DVD_16frames"]}, path)
    with pytest.raises(CheckpointError) as err:
        build_model("sr", path)
    message = str(err.value)
    assert "does not fit task 'sr' (001_RVRT_videosr_bi_REDS_30frames" in message
    assert "video deblurring network (embed dim 192, 3 input channels)" in message
    assert "missing keys" in message


def test_denoise_checkpoint_for_deblur_task_is_refused(tmp_path, full_size_state_dicts):
    path = tmp_path / "weights.pth"
    torch.save(full_size_state_dicts["006_RVRT_videodenoising_DAVIS_16frames"], path)
    with pytest.raises(CheckpointError, match="video denoising network .*4 input channels.*shape mismatches"):
        build_model("deblur-dvd", path)


def test_official_file_name_of_another_task_is_refused(tmp_path, full_size_state_dicts):
    """Same architecture, different training: only the file name tells them apart."""
    path = tmp_path / "002_RVRT_videosr_bi_Vimeo_14frames.pth"
    torch.save({"params": full_size_state_dicts["002_RVRT_videosr_bi_Vimeo_14frames"]}, path)
    with pytest.raises(CheckpointError, match="is the official 002_RVRT_videosr_bi_Vimeo_14frames model.*'sr'"):
        build_model("sr", path)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04truncated zip"])
def test_damaged_files_give_a_clear_error(tmp_path, content):
    path = tmp_path / "broken.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="is not a readable PyTorch weights file"):
        build_model("sr", path)


def test_truncated_checkpoint_gives_a_clear_error(tmp_path):
    path = tmp_path / "cut.pth"
    torch.save({"params": tiny_model("sr").state_dict()}, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="not a readable PyTorch weights file"):
        build_model("sr", path)


class Executes:
    """Pickled objects that would run code are refused by weights_only loading."""

    def __reduce__(self):
        return (print, ("executed",))


def test_arbitrary_pickles_are_refused(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    torch.save({"params": Executes()}, path)
    with pytest.raises(CheckpointError, match="not a readable"):
        build_model("sr", path)
    assert "executed" not in capsys.readouterr().out


def test_missing_checkpoint_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        build_model("sr", tmp_path / "nowhere.pth")


class CountingStages(EagerStages):
    """Eager stages that record which stage ran with which shapes."""

    def __init__(self, model):
        super().__init__(model)
        self.calls = []

    def extract(self, lq):
        self.calls.append(("extract", tuple(lq.shape)))
        return super().extract(lq)

    def flow(self, pair):
        self.calls.append(("flow", tuple(pair.shape)))
        return super().flow(pair)

    def propagate(self, branch, features, key=None, prop=None, flows=()):
        self.calls.append((branch, len(features), key is None, len(flows)))
        return super().propagate(branch, features, key, prop, flows)

    def reconstruct(self, lq, features):
        self.calls.append(("reconstruct", len(features)))
        return super().reconstruct(lq, features)


def official_warp(x, flow):
    """The official flow_warp: (dx, dy) added to pixel centres, normalised for ``align_corners=True`` (the
    model's own warp normalises for half-pixel centres: the same points to float rounding)."""
    _, _, h, w = x.shape
    gy, gx = torch.meshgrid(torch.arange(h, dtype=x.dtype), torch.arange(w, dtype=x.dtype), indexing="ij")
    grid = torch.stack((2 * (gx + flow[:, 0]) / max(w - 1, 1) - 1, 2 * (gy + flow[:, 1]) / max(h - 1, 1) - 1), 3)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def official_forward(model, lqs):
    """The official ``RVRT.forward`` (models/network_rvrt.py of github.com/JingyunLiang/RVRT) unrolled by hand
    over the whole sequence, on ``model``'s modules but none of its stage methods and not the driver:
    flows of all frame pairs in one SpyNet call (after ``F.interpolate`` bicubic to 1/4 for deblur and
    denoise), the official warp, each branch's clip and flow indices as the official loop computes them,
    the updated flows kept by visit, and one reconstruction of the whole sequence with the trilinear
    residual. lqs: (n, t, cin, H, W), t a multiple of the clip size."""
    n, t = lqs.shape[:2]
    clip = model.clip_size
    frames = lqs[:, :, :3]
    if model.upscale != 4:
        frames = F.interpolate(frames.flatten(0, 1), scale_factor=0.25, mode="bicubic").unflatten(0, (n, t))
    first, second = frames[:, :-1].flatten(0, 1), frames[:, 1:].flatten(0, 1)
    flows = {"backward": model.spynet(first, second).unflatten(0, (n, t - 1)),
             "forward": model.spynet(second, first).unflatten(0, (n, t - 1))}
    feats = {"shallow": list(model.feat_extract(lqs).split(clip, 1))}
    updated = {}
    for branch in BRANCHES:
        direction, iteration = branch.split("_")
        backward = direction == "backward"
        clips = list(range(t // clip))[::-1] if backward else list(range(t // clip))
        flow_idx = list(range(t))[::-1] if backward else list(range(-1, t - 1))

        def turn(x):
            return x.flip(1) if backward else x

        previous = list(feats)[-1]
        prop = torch.zeros_like(feats["shallow"][0])
        outputs = []
        if iteration == "1":
            updated[direction] = []
        for i, c in enumerate(clips):
            if i > 0:
                if iteration == "1":
                    n01, n12, n23 = (flows[direction][:, flow_idx[clip * i + k]] for k in (-1, 0, 1))
                    n02 = n12 + official_warp(n01, n12)
                    n13 = n23 + official_warp(n12, n23)
                    n03 = n23 + official_warp(n02, n23)
                    flow_n1, flow_n2 = torch.stack([n02, n13], 1), torch.stack([n12, n03], 1)
                else:
                    flow_n1, flow_n2 = updated[direction][i - 1]
                q, k = turn(feats[previous][c]), turn(feats[previous][clips[i - 1]])
                warped1 = official_warp(prop.flatten(0, 1), flow_n1.flatten(0, 1)).view_as(prop)
                warped2 = official_warp(prop.flip(1).flatten(0, 1), flow_n2.flatten(0, 1)).view_as(prop)
                prop, *new_flows = model.deform_align[branch](q, k, prop, [warped1, warped2], [flow_n1, flow_n2])
                if iteration == "1":
                    updated[direction].append(new_flows)
            prop = prop + model.backbone[branch](torch.cat([turn(feats[name][c]) for name in feats] + [prop], 2))
            outputs.append(prop)
        feats[branch] = [turn(f) for f in outputs[::-1]] if backward else outputs
    hr = model.reconstruction(torch.cat([torch.cat(feats[name], 1) for name in feats], 2))
    hr = model.conv_last(model.upsampler(model.conv_before_upsampler(hr)))
    return hr + F.interpolate(lqs[:, :, :3], size=hr.shape[-3:], mode="trilinear", align_corners=False)


def test_the_stage_driver_computes_the_official_forward(kind_model):
    """Three clips, so that a backward branch's visit order and clip order differ, with random offsets
    (conftest), so that a wrong flow, key or updated flow moves the output by far more than the rounding
    between the two forms (1e-7; a wrong flow or key moves it by 1e-4 or more)."""
    kind, model = kind_model
    lq = random_clip(kind, 6)
    stages = CountingStages(model)
    with torch.no_grad():
        via_driver = run_recurrent(stages, lq)
        reference = official_forward(model, lq)
    torch.testing.assert_close(via_driver, reference, rtol=0, atol=1e-6)
    names = [c[0] for c in stages.calls]
    assert names.count("flow") == 5 and names.count("extract") == 3 and names.count("reconstruct") == 3
    steps = [c for c in stages.calls if c[0] in BRANCHES]
    assert [c[0] for c in steps] == [b for b in BRANCHES for _ in range(3)]
    # Branch i sees shallow + i finished branches; the first clip visited has nothing to align.
    for i, branch in enumerate(BRANCHES):
        mine = [c for c in steps if c[0] == branch]
        assert [c[1] for c in mine] == [1 + i] * 3
        assert [c[2] for c in mine] == [True, False, False]
        # *_1 gets three raw flows, *_2 the two updated ones (parenthesised: a bare conditional would
        # assert the non-empty list [0, 2, 2] for the *_2 branches).
        assert [c[3] for c in mine] == ([0, 3, 3] if branch.endswith("_1") else [0, 2, 2])


def test_stage_shapes(kind_model):
    kind, model = kind_model
    lq = random_clip(kind, 2)
    size = lq.shape[-1]
    feat = size // model.config.feature_stride
    dim = model.config.embed_dims[0]
    with torch.no_grad():
        shallow = model.extract(lq)
        flows = model.flow(lq)
        assert shallow.shape == (1, 2, dim, feat, feat)
        assert flows.shape == (1, 2, 2, feat, feat)
        first = model.propagate("backward_1", [shallow])
        assert len(first) == 1 and first[0].shape == shallow.shape
        raw = (flows[:, 0], flows[:, 0], flows[:, 1])
        out, flow_n1, flow_n2 = model.propagate("backward_1", [shallow], shallow, first[0], raw)
        assert out.shape == shallow.shape and flow_n1.shape == flow_n2.shape == (1, 2, 2, feat, feat)
        (second,) = model.propagate("backward_2", [shallow] * 3, shallow, out, (flow_n1, flow_n2))
        assert second.shape == shallow.shape
        hr = model.reconstruct(lq, [shallow] * 5)
        scale = model.config.upscale
        assert hr.shape == (1, 2, 3, size * scale, size * scale)


def test_flow_directions_are_each_others_pair_swap():
    model = tiny_model("sr")
    lq = random_clip("sr", 2)
    with torch.no_grad():
        both = model.flow(lq)
        swapped = model.flow(lq.flip(1))
    torch.testing.assert_close(both[:, 0], swapped[:, 1])
    torch.testing.assert_close(both[:, 1], swapped[:, 0])


def test_odd_frame_count_mirrors_the_last_frame(kind_model):
    kind, model = kind_model
    lq = random_clip(kind, 5)
    with torch.no_grad():
        out = model(lq)
        padded = model(torch.cat([lq, lq[:, -1:]], 1))
    assert out.shape[1] == 5
    assert torch.equal(out, padded[:, :5])
