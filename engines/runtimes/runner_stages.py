"""Stages served by runners: one runner per stage graph, fed by the graphs' names.

The same class serves sessions with ``onnxruntime.InferenceSession``'s interface (:class:`SessionRunner`,
numpy arrays: ONNX Runtime's sessions and OpenVINO's compiled graphs) and TensorRT engines (Polygraphy's
``TrtRunner``, torch CUDA tensors); the recurrent driver (:func:`rvrt.run_recurrent`) cannot tell them from eager
stages. Nothing here imports a runtime: OpenVINO serves its entries without loading ONNX Runtime.
"""

from __future__ import annotations

import contextlib

import numpy as np

from rvrt import run_recurrent
from rvrt.arrays import contiguous, to_numpy
from rvrt.config import BRANCHES


def stage_io(manifest: dict) -> dict[str, tuple[list[str], list[str]]]:
    """stage name -> (input names, output names), as an export or engine manifest lists them."""
    return {name: ([i["name"] for i in stage["inputs"]], list(stage["outputs"]))
            for name, stage in manifest["stages"].items()}


class RunnerStages:
    """Implements :class:`rvrt.driver.Stages` over ``runners`` (stage name -> a runner with Polygraphy's
    life cycle: a context manager whose ``infer(feed)`` maps input names to arrays, output names to arrays).

    stages: stage name -> (input names, output names), from the export manifest. Use as a
    context manager: runners are activated (sessions/engines created) once on entry and
    reused for every tile and window. infer_options: keyword arguments of every ``infer``
    call (TensorRT: keep outputs on the device). clone_outputs: copy what a runner returns,
    for runners that reuse their output buffers on the next call (Polygraphy's TrtRunner, torch),
    since the driver keeps a step's outputs while it runs the same stage on the next clip.
    """

    def __init__(self, runners: dict, stages: dict[str, tuple[list[str], list[str]]], clip_size: int,
                 infer_options: dict | None = None, clone_outputs: bool = False):
        required = ("extract", "flow", "reconstruct", *BRANCHES, *(f"{b}_first" for b in BRANCHES))
        missing = [name for name in required if name not in runners]
        if missing:
            raise ValueError(f"no runner for stage(s) {', '.join(missing)}")
        self.runners = runners
        self.stages = stages
        self.clip_size = clip_size
        self.infer_options = infer_options or {}
        self.clone_outputs = clone_outputs
        self._active = contextlib.ExitStack()

    def __enter__(self):
        for runner in self.runners.values():
            self._active.enter_context(runner)
        return self

    def __exit__(self, *exc):
        self._active.close()

    def _run(self, stage: str, arrays: list) -> tuple:
        input_names, output_names = self.stages[stage]
        feed = {name: contiguous(array) for name, array in zip(input_names, arrays, strict=True)}
        outputs = self.runners[stage].infer(feed, **self.infer_options)
        if self.clone_outputs:
            return tuple(outputs[name].clone() for name in output_names)
        return tuple(outputs[name] for name in output_names)

    def extract(self, lq):
        return self._run("extract", [lq])[0]

    def flow(self, pair):
        return self._run("flow", [pair])[0]

    def propagate(self, branch, features, key=None, prop=None, flows=()):
        if key is None:
            return self._run(f"{branch}_first", list(features))
        return self._run(branch, [*features, key, prop, *flows])

    def reconstruct(self, lq, features):
        return self._run("reconstruct", [lq, *features])[0]


class SessionRunner:
    """Runs one session: numpy arrays in, numpy arrays out, with Polygraphy's runner life cycle
    (``activate`` / ``infer`` / ``deactivate``, or ``with runner:``). Named for the interface it runs, not a
    runtime: ONNX Runtime's sessions and OpenVINO's compiled graphs both come through it.

    session: an ``onnxruntime.InferenceSession`` or an object with its interface (``get_outputs``, ``run``: a
    :class:`~.onnxruntime_gda_split.SplitGdaSession`, an OpenVINO graph), or a loader that returns one (such as
    :class:`~.onnxruntime.SessionFromPath`), called on activation: building a runner costs nothing.
    """

    def __init__(self, session, name: str | None = None):
        self._session = session
        self.name = name
        self.session = None
        self.output_names: list[str] = []

    @property
    def is_active(self) -> bool:
        return self.session is not None

    def activate(self) -> None:
        if self.is_active:
            raise RuntimeError(f"runner {self.name} is active already")
        self.session = self._session() if callable(self._session) else self._session
        self.output_names = [output.name for output in self.session.get_outputs()]

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Input name -> array (float32, C-contiguous) to output name -> array, in graph order."""
        if not self.is_active:
            raise RuntimeError(f"runner {self.name} is not active: use it inside 'with runner:'")
        return dict(zip(self.output_names, self.session.run(self.output_names, feed), strict=True))

    def deactivate(self) -> None:
        self.session = None

    def __enter__(self):
        self.activate()
        return self

    def __exit__(self, *exc):
        self.deactivate()


def run_on_numpy(stages: RunnerStages, lq):
    """The recurrent driver on stages that compute on numpy arrays: lq (any array kind) -> restored numpy array."""
    return run_recurrent(stages, to_numpy(lq))
