"""A worker interpreter of a parallel export (``export_onnx(jobs=N)``): exports and validates the stages named
on its standard input, one per line, and answers each with one JSON line (the validation record, or the error).

Arguments: the scratch file holding the model's config and weights, the staging directory, the opset, the tile
as HEIGHTxWIDTH, the batch and the threads of this worker.
"""

import json
import os
import signal
import sys
import traceback
from pathlib import Path

import torch

from rvrt.config import RVRTConfig
from rvrt.model import RVRT

from .onnx_export import export_and_validate
from .stages import stage_specs


def main(weights: str, staging: str, opset: str, tile: str, batch: str, threads: str) -> int:
    # Ctrl-C reaches the whole process group: the command that started this worker stops it, and says so once.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The exporter and torch print to stdout: the answers keep stdout's pipe, everything else goes to stderr.
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    torch.set_num_threads(int(threads))
    saved = torch.load(weights, weights_only=True)
    model = RVRT(RVRTConfig(**saved["config"]))
    model.load_state_dict(saved["state"], strict=True)
    model.eval()
    height, width = (int(side) for side in tile.split("x"))
    specs = {spec.name: spec for spec in stage_specs(model, (height, width), int(batch))}
    for line in sys.stdin:
        spec = specs[line.strip()]
        try:
            record = export_and_validate(model, spec, Path(staging) / f"{spec.name}.onnx", int(opset))
        except Exception as err:
            traceback.print_exc()
            answers.write(json.dumps({"error": f"{type(err).__name__}: {err}"}) + "\n")
            return 1
        answers.write(json.dumps({"record": record}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
