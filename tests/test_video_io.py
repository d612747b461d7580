"""Video input/output: exact lossless round trips, natural frame order, atomic writes."""

import av
import numpy as np
import pytest

from rvrt_engines.synthetic import degrade, moving_photo_frames, write_video
from rvrt_engines.video import VideoInputError, VideoOutputError, natural_key, open_frames, open_writer

FRAMES = moving_photo_frames(6, 40, 56, seed=2)


@pytest.mark.parametrize("name", ["clip.mkv", "clip.mp4", "frames"])
def test_lossless_outputs_round_trip_exactly(tmp_path, name):
    write_video(tmp_path / name, FRAMES, lossless=True)
    source = open_frames(tmp_path / name)
    assert (source.width, source.height, source.frame_count) == (56, 40, 6)
    assert np.array_equal(np.stack(list(source)), FRAMES)


@pytest.mark.parametrize("name,size", [("odd.webm", (33, 47)), ("odd.mp4", (34, 48))])
def test_odd_sizes_stay_4_2_0(tmp_path, name, size):
    """VP9 codes odd sizes in 4:2:0; H.264 cannot, so its frames are padded by one repeated
    row/column (and a note says so) rather than switched to the rare High 4:4:4 profile."""
    odd = moving_photo_frames(5, 33, 47, seed=4)
    sink = open_writer(tmp_path / name, 30, 47, 33, crf=10)
    with sink as writer:
        for frame in odd:
            writer.write(frame)
    assert any("padded to 48x34" in note for note in sink.notes) == name.endswith(".mp4")
    source = open_frames(tmp_path / name)
    back = np.stack(list(source))
    assert back.shape == (5, *size, 3) and float(source.frame_rate) == 30
    assert source.pix_fmt == "yuv420p"
    assert np.abs(back[:, :33, :47].astype(int) - odd.astype(int)).mean() < 8  # 4:2:0 chroma of a detailed image


def test_folders_sort_naturally(tmp_path):
    names = ["f10.png", "f2.png", "f1.png"]
    assert sorted(names, key=lambda n: natural_key(tmp_path / n)) == ["f1.png", "f2.png", "f10.png"]
    write_video(tmp_path / "tmp_frames", FRAMES[:3], lossless=True)
    folder = tmp_path / "named"
    folder.mkdir()
    for index, name in zip(range(3), ["f1.png", "f2.png", "f10.png"]):
        (tmp_path / "tmp_frames" / f"{index:06d}.png").rename(folder / name)
    assert np.array_equal(np.stack(list(open_frames(folder))), FRAMES[:3])


def test_frames_of_different_sizes_are_refused(tmp_path):
    write_video(tmp_path / "a", FRAMES[:2], lossless=True)
    write_video(tmp_path / "b", moving_photo_frames(1, 24, 24), lossless=True)
    (tmp_path / "b" / "000000.png").rename(tmp_path / "a" / "000002.png")
    with pytest.raises(VideoInputError, match="all frames must have one size"):
        list(open_frames(tmp_path / "a"))


def test_decoding_is_lazy(tmp_path):
    write_video(tmp_path / "long.mkv", np.repeat(FRAMES, 20, axis=0), lossless=True)
    source = open_frames(tmp_path / "long.mkv")
    assert source.frame_count == 120
    first = next(iter(source))
    assert np.array_equal(first, FRAMES[0])


def test_writer_is_atomic_and_refuses_to_overwrite(tmp_path):
    target = tmp_path / "out.mp4"
    with pytest.raises(ZeroDivisionError):
        with open_writer(target, 25, 56, 40) as writer:
            writer.write(FRAMES[0])
            raise ZeroDivisionError
    assert list(tmp_path.iterdir()) == []
    write_video(target, FRAMES, overwrite=False)
    with pytest.raises(VideoOutputError, match="--overwrite"):
        open_writer(target, 25, 56, 40)


def test_degradations_have_the_expected_shapes_and_effects():
    assert degrade(FRAMES, "sr").shape == (6, 10, 14, 3)
    blurred = degrade(FRAMES, "deblur").astype(int)
    assert np.abs(np.diff(blurred, axis=2)).mean() < np.abs(np.diff(FRAMES.astype(int), axis=2)).mean()
    noisy = degrade(FRAMES, "denoise", sigma=20).astype(int)
    assert 10 < np.std(noisy - FRAMES.astype(int)) < 25
    assert np.abs(np.diff(FRAMES.astype(int), axis=0)).mean() > 1


@pytest.mark.parametrize("lossless,codec", [(False, "h264"), (True, "ffv1")])
def test_avi_is_writable(tmp_path, lossless, codec):
    write_video(tmp_path / "clip.avi", FRAMES, lossless=lossless)
    source = open_frames(tmp_path / "clip.avi")
    back = np.stack(list(source))
    assert back.shape == FRAMES.shape and float(source.frame_rate) == 25
    with av.open(str(tmp_path / "clip.avi")) as container:
        assert container.streams.video[0].codec_context.name == codec
    assert np.array_equal(back, FRAMES) == lossless
