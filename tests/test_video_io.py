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


def encode(path, frames, **options):
    sink = open_writer(path, 25, frames.shape[2], frames.shape[1], overwrite=True, **options)
    with sink as writer:
        for frame in frames:
            writer.write(frame)
    return path.read_bytes() if path.is_file() else None


# 352 px wide: not a multiple of 128, where libx264's AVX-512 code made two encodes differ.
CIF = moving_photo_frames(12, 288, 352, seed=5)


@pytest.mark.parametrize("name", ["a.mp4", "a.mkv", "a.webm", "a.mov"])
def test_identical_frames_give_identical_lossy_files(tmp_path, name):
    first = encode(tmp_path / name, CIF, provenance={"task": "sr"})
    assert encode(tmp_path / name, CIF, provenance={"task": "sr"}) == first


def x264_settings(data: bytes) -> str:
    """The options string libx264 writes into its SEI: what the encoder really ran with."""
    start = data.index(b"x264 - core")
    return data[start:data.index(b"\0", start)].decode()


def test_preset_and_encoder_options_reach_the_encoder(tmp_path):
    fast = x264_settings(encode(tmp_path / "fast.mp4", CIF, preset="ultrafast"))
    film = x264_settings(encode(tmp_path / "film.mp4", CIF, preset="slower", encoder_options=("tune=film",
                                                                                             "x264-params=keyint=30")))
    assert "subme=0" in fast and "cabac=0" in fast
    assert "subme=9" in film and "deblock=1:-1:-1" in film and "keyint=30" in film


@pytest.mark.parametrize("options, message", [
    ({"encoder_options": ("nosuchoption=1",)}, "--encoder-option nosuchoption: libx264 has no such option"),
    ({"preset": "slow", "codec": "libvpx-vp9"}, "--preset: libvpx-vp9 has no such option"),
    ({"preset": "warp-speed"}, "could not be opened"),
    ({"encoder_options": ("tune",)}, "expected KEY=VALUE"),
    ({"crf": 20, "encoder_options": ("crf=21",)}, "both set the quality"),
    ({"lossless": True, "encoder_options": ("qp=4",)}, "it would undo lossless"),
])
def test_encoder_options_it_does_not_take_are_refused_before_any_frame(tmp_path, options, message):
    with pytest.raises(VideoOutputError, match=message):
        open_writer(tmp_path / "out.mp4", 25, 352, 288, **options).validate()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("path", ["-", "frames"])
def test_encoder_options_do_not_apply_to_pipes_and_frame_folders(tmp_path, path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(VideoOutputError, match="--preset"):
        open_writer(path, 25, 352, 288, preset="slow")


def test_outputs_record_how_they_were_made(tmp_path):
    from rvrt_engines.video.writer import read_provenance

    record = {"task": "001_RVRT_videosr_bi_REDS_30frames", "weights": "random weights", "runtime": "onnxruntime",
              "precision": "float32"}
    for name in ("out.mp4", "out.mkv", "out.webm", "frames"):
        encode(tmp_path / name, FRAMES, provenance=record)
        found = read_provenance(tmp_path / name)
        assert found.pop("made_by").startswith("rvrt-deploy") and found == record
    assert read_provenance(tmp_path / "frames") is not None
    encode(tmp_path / "frames", FRAMES[:2])   # replaced by frames made without a record: none is left
    assert sorted(p.name for p in (tmp_path / "frames").iterdir()) == ["000000.png", "000001.png"]
    assert read_provenance(tmp_path / "frames") is None


def test_a_cut_short_mp4_with_its_index_in_front_says_so(tmp_path):
    """The index (moov) at the front lists every frame; the cut leaves gaps that read as a
    variable frame rate unless the cut is recognised."""
    whole = tmp_path / "whole.mp4"
    with av.open(str(whole), "w", options={"movflags": "+faststart"}) as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 128, 96, "yuv420p"
        for index, frame in enumerate(moving_photo_frames(30, 96, 128, seed=1)):
            video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
            video_frame.pts = index
            for packet in stream.encode(video_frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    assert open_frames(whole).frame_count == 30
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[:whole.stat().st_size * 6 // 10])
    with pytest.raises(VideoInputError, match=r"the file is cut short: its index lists 30 frames, only \d+ are in it"):
        open_frames(cut)
