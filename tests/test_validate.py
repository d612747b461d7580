"""rvrt-validate: parity reports that measure what ran, fail what is wrong and skip, with the
reason, what cannot run here."""

import json
import os
import shutil

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper
from PIL import Image

from rvrt_engines.runtimes.tensorrt import tensorrt_unavailable
from rvrt_engines.manifest import read_manifest, sha256_of, write_manifest
from rvrt_validate.cli import main as validate_cli
from rvrt_validate.images import GAP, LABEL_HEIGHT
from rvrt_validate.render import decibels, render_markdown
from rvrt_engines.runtimes import PyTorch
from rvrt_engines.runtimes.openvino import NO_BF16_ENV, OpenVino, bf16_capable
from rvrt_validate.report import ran_instead, validate


@pytest.fixture(scope="module")
def sr_report(tiny_export, tmp_path_factory):
    model, checkpoint, export_dir = tiny_export("sr")
    out = tmp_path_factory.mktemp("report") / "sr"
    result = CliRunner().invoke(validate_cli, [str(export_dir), "--checkpoint", str(checkpoint), "--frames", "4",
                                               "-o", str(out)])
    return result, out


def test_report_covers_onnxruntime_both_precisions(sr_report):
    result, out = sr_report
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    by_label = {c["label"]: c for c in report["candidates"]}
    measured = [("onnxruntime float32", "float32"), ("onnxruntime float16", "float16"), ("openvino float32", "float32")]
    if bf16_capable():
        measured.append(("openvino bfloat16", "bfloat16"))
        assert by_label["openvino bfloat16"]["end_to_end"]["psnr_db"] > 40
    else:
        # Without the instructions OpenVINO would run float32: a bfloat16 pass would be a claim never measured.
        assert by_label["openvino bfloat16"]["status"] == "skipped"
        assert by_label["openvino bfloat16"]["skipped"] == ("OpenVINO bfloat16 does not run on this machine: it "
                                                            "runs float32 here instead")
    assert report["verdict"] == "pass" and report["summary"]["passed"] == len(measured)
    for label, precision in measured:
        candidate = by_label[label]
        assert candidate["status"] == "pass" and candidate["precision"] == precision
        assert len(candidate["stages"]) == 11 and all(s["passed"] for s in candidate["stages"].values())
        e2e = candidate["end_to_end"]
        assert set(e2e) >= {"max_abs", "mean_abs", "psnr_db", "ssim", "passed"}
    assert by_label["onnxruntime float32"]["end_to_end"]["max_abs"] < 1e-4
    assert by_label["onnxruntime float16"]["end_to_end"]["psnr_db"] > 60
    assert by_label["openvino float32"]["end_to_end"]["max_abs"] < 1e-3
    assert report["clip"]["output_size"] == [288, 288]


def test_tensorrt_is_skipped_with_the_reason_never_passed(sr_report, tiny_export):
    _, out = sr_report
    _, _, export_dir = tiny_export("sr")
    report = json.loads((out / "report.json").read_text())
    tensorrt = [c for c in report["candidates"] if c["runtime"] == "tensorrt"]
    assert [c["precision"] for c in tensorrt] == ["float32", "float16"]
    missing = tensorrt_unavailable()
    for candidate in tensorrt:
        assert candidate["status"] == "skipped" and "stages" not in candidate and "end_to_end" not in candidate
        if missing:
            assert candidate["skipped"] == missing
        else:
            # TensorRT runs here, but an ONNX export holds no engines: the reason says how to build them.
            flag = " --fp16" if candidate["precision"] == "float16" else ""
            assert candidate["skipped"].endswith(f"build engines with 'rvrt-export trt {export_dir}{flag}' and "
                                                 f"validate that directory")
    markdown = (out / "report.md").read_text()
    assert "| tensorrt float16 | skipped |" in markdown and "not counted as passing" in markdown


def test_pytorch_on_cuda_is_a_candidate_skipped_with_the_reason_without_a_gpu(sr_report):
    if PyTorch(device="cuda").unavailable() is None:
        pytest.skip("a CUDA GPU is present: the GPU suite measures pytorch-cuda")
    _, out = sr_report
    report = json.loads((out / "report.json").read_text())
    cuda = [c for c in report["candidates"] if c["label"].startswith("pytorch-cuda")]
    assert [c["precision"] for c in cuda] == ["float32", "float16"]
    assert all(c["status"] == "skipped" and "no CUDA GPU" in c["skipped"] for c in cuda)


def test_pictures_are_written_and_linked(sr_report):
    _, out = sr_report
    report = json.loads((out / "report.json").read_text())
    markdown = (out / "report.md").read_text()
    for candidate in report["candidates"]:
        if candidate["status"] == "skipped":
            continue
        pictures = candidate["images"]
        crop = Image.open(out / pictures["crop"])
        heat = Image.open(out / pictures["heatmap"])
        _, _, h, w = pictures["crop_box"]
        assert crop.size == (4 * w + 3 * GAP, LABEL_HEIGHT + h) and heat.size == (288, 288)
        assert f"]({pictures['crop']})" in markdown and f"]({pictures['heatmap']})" in markdown
        # The largest error is drawn white (rounding may whiten a few pixels near it too), and the crop is
        # centred on one of those pixels as far as the frame allows.
        heat = np.asarray(heat.convert("RGB"))
        white = np.argwhere((heat == 255).all(axis=2))
        top, left = pictures["crop_box"][:2]
        assert any((top, left) == (min(max(y - h // 2, 0), 288 - h), min(max(x - w // 2, 0), 288 - w))
                   for y, x in white), (pictures["crop_box"], white[:5])
        # The crop's error panel is that window of the heat map.
        error_panel = np.asarray(crop.convert("RGB"))[LABEL_HEIGHT:, 3 * (w + GAP):3 * (w + GAP) + w]
        assert np.array_equal(error_panel, heat[top:top + h, left:left + w])
        # Each panel carries its label (input, eager, the candidate, error) drawn above it.
        strip = np.asarray(crop.convert("L"))[:LABEL_HEIGHT]
        for panel in range(4):
            assert strip[:, panel * (w + GAP):panel * (w + GAP) + w].min() < 100, f"panel {panel} has no label"


def test_captions_say_what_each_scale_measures(sr_report):
    _, out = sr_report
    markdown = (out / "report.md").read_text()
    assert "left to right: input (nearest-upsampled), eager, onnxruntime float16, error" in markdown
    assert "averaged over the three colour channels, scaled to its largest value on this frame" in markdown
    assert "the largest difference of one colour channel of one pixel over all restored frames" in markdown


def test_numbers_read_the_same_in_the_report_and_on_the_terminal(sr_report):
    result, out = sr_report
    report = json.loads((out / "report.json").read_text())
    markdown = (out / "report.md").read_text()
    for candidate in report["candidates"]:
        if candidate["status"] == "skipped":
            continue
        psnr = decibels(candidate["end_to_end"]["psnr_db"])
        assert psnr == "identical" or psnr.endswith(" dB") and "e+" not in psnr
        assert f"PSNR {psnr}," in result.stdout and f"| {psnr} |" in markdown


def test_random_weights_are_in_the_title_and_a_checkpoint_otherwise(sr_report):
    _, out = sr_report
    report = json.loads((out / "report.json").read_text())
    assert render_markdown(report).splitlines()[0] == "# Accuracy parity: sr, checkpoint weights.pth"
    random = {**report, "weights": {"random_weights": True, "seed": 0}}
    title = render_markdown(random).splitlines()[0]
    assert title == "# Accuracy parity: sr, random weights (seed 0)" and report["task"] not in title


def test_progress_is_shown_per_stage_and_candidate(sr_report):
    result, _ = sr_report
    for line in ("restoring the 4-frame clip of 72x72 with eager PyTorch float32 (the reference)",
                 "validating onnxruntime float32: stage extract (1/11)",
                 "validating onnxruntime float32: stage reconstruct (11/11)",
                 "validating onnxruntime float32: restoring the clip",
                 "stage extract (1/11): converting to float16 and validating against eager PyTorch",
                 "validating onnxruntime float16: restoring the clip"):
        assert line in result.stderr.splitlines(), result.stderr


def test_the_report_folder_takes_the_umask(sr_report):
    _, out = sr_report
    umask = os.umask(0)
    os.umask(umask)
    assert oct(out.stat().st_mode & 0o777) == oct(0o777 & ~umask)
    assert oct((out / "report.md").stat().st_mode & 0o777) == oct(0o666 & ~umask)


def test_a_report_measures_only_the_runtimes_and_precisions_asked_for(tiny_export, tmp_path):
    _, checkpoint, export_dir = tiny_export("sr")
    out = tmp_path / "report"
    result = CliRunner().invoke(validate_cli, [str(export_dir), "--checkpoint", str(checkpoint), "--frames", "2",
                                               "--runtime", "onnxruntime", "--precision", "f32", "-o", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert [(c["label"], c["status"]) for c in report["candidates"]] == [("onnxruntime float32", "pass")]
    assert report["asked"] == {"runtimes": ["onnxruntime"], "precisions": ["float32"]}
    assert "Measured only as asked: runtime onnxruntime; precision float32; the other candidates did not run." \
        in (out / "report.md").read_text()
    refused = CliRunner().invoke(validate_cli, [str(export_dir), "--checkpoint", str(checkpoint), "--runtime", "onnx",
                                                "-o", str(tmp_path / "none")])
    assert refused.exit_code == 2 and "'onnx' is not one of 'onnxruntime', 'openvino'" in refused.output
    unserved = CliRunner().invoke(validate_cli, [str(export_dir), "--checkpoint", str(checkpoint), "--runtime",
                                                 "onnxruntime", "--precision", "bf16", "-o", str(tmp_path / "none")])
    assert unserved.exit_code == 2 and unserved.output.strip().splitlines() == [
        "Error: --runtime onnxruntime --precision bf16: ONNX Runtime serves f32, f16"]
    assert not (tmp_path / "none").exists()


def test_a_wrong_weight_fails_its_stage_and_the_report(tiny_export, tmp_path):
    model, _, export_dir = tiny_export("sr")
    broken = tmp_path / "broken"
    shutil.copytree(export_dir, broken)
    graph = onnx.load(str(broken / "reconstruct.onnx"))
    weight = next(t for t in graph.graph.initializer if t.name == "model.upsampler.0.weight")
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * 1.05, weight.name))
    onnx.save(graph, str(broken / "reconstruct.onnx"))
    report = validate(model, broken, tmp_path / "report", frames=2, runtimes=["onnxruntime"], precisions=["float32"])
    assert report["verdict"] == "fail"
    [fp32] = report["candidates"]
    assert fp32["status"] == "fail" and not fp32["stages"]["reconstruct"]["passed"]
    assert all(s["passed"] for name, s in fp32["stages"].items() if name != "reconstruct")
    assert "**FAIL**" in (tmp_path / "report" / "report.md").read_text()


def test_engine_directory_without_tensorrt_reports_its_graphs_and_skips_the_engines(tiny_export, tmp_path):
    if tensorrt_unavailable() is None:
        pytest.skip("TensorRT is available here: the GPU tests cover engine directories")
    model, _, export_dir = tiny_export("sr")
    engines = tmp_path / "engines"
    engines.mkdir()
    manifest = read_manifest(export_dir)
    manifest.update(onnx_dir=str(export_dir), engine={"precision": "float32", "tensorrt": "10.13.0", "gpu": "L4",
                                                      "compute_capability": "8.9", "plugin": "lib.so"})
    write_manifest(engines, manifest)
    report = validate(model, engines, tmp_path / "report", frames=2)
    assert [(c["label"], c["status"]) for c in report["candidates"]] == [
        ("onnxruntime float32", "pass"), ("openvino float32", "pass"), ("tensorrt float32", "skipped"),
        ("pytorch-cuda float32", "skipped"), ("pytorch-cuda float16", "skipped")]
    assert report["verdict"] == "pass" and report["summary"]["skipped"] == 3


def test_weights_must_be_the_exported_ones(tiny_export, tmp_path):
    _, checkpoint, export_dir = tiny_export("sr")
    runner = CliRunner()
    result = runner.invoke(validate_cli, [str(export_dir), "--random-weights", "-o", str(tmp_path / "a")])
    assert result.exit_code == 2 and "pass --checkpoint" in result.output
    other = tmp_path / "other.pth"
    other.write_bytes(checkpoint.read_bytes() + b"\0")
    result = runner.invoke(validate_cli, [str(export_dir), "--checkpoint", str(other), "-o", str(tmp_path / "b")])
    assert result.exit_code == 2 and "is not the one" in result.output and sha256_of(other)[:12] in result.output
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_precision_this_cpu_would_replace_is_skipped_not_measured_under_its_name(monkeypatch):
    monkeypatch.setenv(NO_BF16_ENV, "1")
    assert ran_instead(OpenVino(precision="bfloat16")) == ("OpenVINO bfloat16 does not run on this machine: it runs "
                                                           "float32 here instead")
    assert ran_instead(OpenVino(precision="float32")) is None
