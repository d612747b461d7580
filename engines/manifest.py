"""The manifest of an export directory: what was exported, from what, and whether it was validated."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Iterator, Sequence
from importlib import metadata
from pathlib import Path, PurePath

from rvrt.config import RVRTConfig
from rvrt.tiling import tile_shape_of

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


class ArtifactError(ValueError):
    """An export or engine directory that cannot be served as asked (bad input: exit status 2)."""


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def versions() -> dict[str, str]:
    """The exporter's library versions, read from the installed packages' metadata (nothing is
    imported: a serving process computes a cache key without loading PyTorch). A library that
    is not installed is listed as absent."""
    found = {}
    for name in ("rvrt-deploy", "torch", "onnx", "onnxscript", "onnxruntime"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "absent"
    return found


def config_from_manifest(manifest: dict) -> RVRTConfig:
    """The architecture an export was made for, as its manifest records it."""
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in manifest["config"].items()}
    return RVRTConfig(**values)


def tile_record(tile: int | Sequence[int]) -> int | list[int]:
    """How a manifest records a tile: one int for a square (what every manifest before rectangular
    tiles holds, so they all still read), [height, width] otherwise."""
    height, width = tile_shape_of(tile)
    return height if height == width else [height, width]


def tile_of(manifest: dict) -> tuple[int, int]:
    """(height, width) of the tile an export was made for, whichever way its manifest records it."""
    return tile_shape_of(manifest["tile"])


def write_manifest(directory: Path, manifest: dict) -> None:
    """Write atomically: a reader never sees half a manifest."""
    partial = directory / (MANIFEST + ".partial")
    partial.write_text(json.dumps(manifest, indent=2) + "\n")
    partial.replace(directory / MANIFEST)


def graph_record(path: Path) -> dict:
    """A graph file's size and sha256 for its stage entry, with those of its external weights
    (``<graph>.data``, where ``export_with_gda`` puts the weights of graphs over 1.5 GB)."""
    record = {"bytes": path.stat().st_size, "sha256": sha256_of(path)}
    data = path.with_name(path.name + ".data")
    if data.is_file():
        record.update(data=data.name, data_bytes=data.stat().st_size, data_sha256=sha256_of(data))
    return record


def compiled_graphs(stage: dict) -> Iterator[tuple[str, dict]]:
    """(what, record) of the compiled graphs a stage's record holds, each a record with its own ``file``: an
    OpenVINO entry keeps a stage's graph, or its two parts around GDA, that way."""
    for key, record in stage.items():
        if isinstance(record, dict) and "file" in record:
            yield ("compiled graph" if key == "graph" else f"compiled part {key!r}"), record


def named_files(manifest: dict) -> Iterator[tuple[str, object]]:
    """(what, path as written) of every file a manifest names: each stage's graph, its external
    weights, its engine and its compiled graphs, and the TensorRT plugin library."""
    for name, stage in (manifest.get("stages") or {}).items():
        for field, what in (("file", "graph"), ("data", "external weights"), ("plan", "engine")):
            if field in stage:
                yield f"the {what} of stage {name!r}", stage[field]
        for what, record in compiled_graphs(stage):
            yield f"the {what} of stage {name!r}", record["file"]
    engine = manifest.get("engine") or {}
    if "plugin" in engine:
        yield "the TensorRT plugin library", engine["plugin"]


def inside(directory: Path, name: object, what: str) -> Path:
    """``directory / name``, or ArtifactError unless it stays inside ``directory``: an artefact
    directory is used as a whole (copied, cached, shared), and an engine directory's plugin is
    loaded into the process, so a manifest naming ``/elsewhere/lib.so`` or ``../../lib.so``
    would run code that nobody handed over with the directory."""
    manifest = directory / MANIFEST
    if not isinstance(name, str) or not name:
        raise ArtifactError(f"{manifest}: {what} is {name!r}, not a file name: export again")
    relative = PurePath(name)
    if relative.is_absolute() or ".." in relative.parts:
        raise ArtifactError(f"{manifest}: {what} is {name!r}, a path leading out of {directory}; refusing it "
                            f"(a manifest may only name files inside its own directory)")
    path = directory / relative
    target = path.resolve()
    if not target.is_relative_to(directory.resolve()):
        raise ArtifactError(f"{manifest}: {what} {name!r} leads out of {directory} through a symbolic link (to "
                            f"{target}); refusing it (a manifest may only name files inside its own directory)")
    return path


def holds(manifest: dict) -> str:
    """What an artefact directory holds, as messages name it: "float32 ONNX graphs", "float16 TensorRT engines"."""
    return f"{manifest['dtype']} {'TensorRT engines' if 'engine' in manifest else 'ONNX graphs'}"


def source_graphs(manifest: dict, directory: Path) -> Path | None:
    """The ONNX export an engine directory was built from (None for an export itself)."""
    if "engine" not in manifest:
        return None
    graphs = Path(manifest["onnx_dir"])
    return graphs if graphs.is_absolute() else directory / graphs


def remedy(manifest: dict) -> str:
    """How a damaged artefact directory of this kind is made again."""
    if "engine" in manifest:
        return "build the engines again ('rvrt-export trt')"
    if manifest.get("dtype") == "float16":
        return "make the float16 graphs again ('rvrt-export fp16')"
    made_from = (manifest.get("source") or {}).get("dir")
    if made_from:
        # A runtime's entry made from an export (OpenVINO's compiled graphs): serving that export again remakes it.
        return f"serve the export it was made from ({made_from}) with the same --runtime, which makes it again"
    return "export again ('rvrt-export onnx')"


def served_files(manifest: dict, directory: Path) -> Iterator[tuple[str, Path, int | None, str | None]]:
    """(what, path, recorded size, recorded sha256) of the files a runtime loads from ``directory``:
    an export's graphs and their external weights, an OpenVINO entry's compiled graphs (no size nor
    sha256: the cache's seal holds those), or an engine directory's engines and plugin
    (its ``file`` entries name the graphs the engines were built from, elsewhere). None where a
    manifest of an earlier version recorded nothing."""
    engines = "engine" in manifest
    for name, stage in manifest["stages"].items():
        compiled = list(compiled_graphs(stage))
        for what, record in compiled:
            label = f"the {what} of stage {name!r}"
            yield label, inside(directory, record["file"], label), record.get("bytes"), record.get("sha256")
        fields = [("plan", "plan_bytes", "plan_sha256", "engine")] if engines else [
            ("file", "bytes", "sha256", "graph"), ("data", "data_bytes", "data_sha256", "external weights")]
        for field, size, digest, what in fields:
            label = f"the {what} of stage {name!r}"
            if field in stage:
                yield label, inside(directory, stage[field], label), stage.get(size), stage.get(digest)
            elif field != "data" and not compiled:
                raise ArtifactError(f"{directory / MANIFEST}: stage {name!r} names no {what} file; {remedy(manifest)}")
    if engines:
        label = "the TensorRT plugin library"
        yield label, inside(directory, manifest["engine"].get("plugin"), label), None, manifest["engine"].get(
            "plugin_sha256")


def check_files(manifest: dict, directory: str | os.PathLike, *, hashes: bool = False) -> None:
    """Refuse a directory whose files are not the ones its manifest records: missing, of another
    size (a truncated copy: checked always, it costs a stat) or, with ``hashes``, of another
    sha256 (reads every byte). Runs before any session or engine is made, so a damaged graph is
    named in one line instead of failing deep inside ONNX Runtime or TensorRT."""
    directory = Path(directory)
    for what, path, size, digest in served_files(manifest, directory):
        if not path.is_file():
            raise ArtifactError(f"{path} ({what}) is missing: {remedy(manifest)}")
        found = path.stat().st_size
        if size is not None and found != size:
            raise ArtifactError(f"{path} ({what}) is {found} bytes, its manifest records {size}: the file is "
                                f"truncated or damaged; {remedy(manifest)}")
        if hashes and digest is not None and sha256_of(path) != digest:
            raise ArtifactError(f"{path} ({what}) differs from the file its manifest records (sha256 "
                                f"{digest[:12]}...): the file is damaged or was replaced; {remedy(manifest)}")


def read_manifest(directory: str | os.PathLike) -> dict:
    """The manifest of an export or engine directory, refused (ArtifactError) when unreadable, of
    another format version, or naming a file outside the directory (:func:`inside`)."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{str(directory)!r} is not an export directory: no {MANIFEST} (create one with "
                            f"'rvrt-export onnx')")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ArtifactError(f"{path} is not valid JSON: {err}") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{path} has format version {manifest.get('format_version')!r}, this rvrt-deploy "
                            f"reads version {FORMAT_VERSION}: export again")
    for what, name in named_files(manifest):
        inside(Path(directory), name, what)
    return manifest


def require_validated(manifest: dict, directory: str | os.PathLike, allow_unvalidated: bool = False) -> None:
    """Refuse artefacts without a passing validation record, unless explicitly allowed."""
    record = manifest.get("validation") or {}
    if record.get("passed") is True or allow_unvalidated:
        return
    failed = [name for name, stage in record.get("stages", {}).items() if not stage.get("passed")]
    reason = f"validation failed for {', '.join(failed)}" if failed else "it has no validation record"
    raise ArtifactError(f"refusing to serve {str(directory)!r}: {reason}. Export it again (export validates "
                        f"every stage against eager PyTorch), or pass --allow-unvalidated to run it anyway")


@contextlib.contextmanager
def assembled(out_dir: str | os.PathLike) -> Iterator[Path]:
    """A staging directory beside ``out_dir`` that becomes ``out_dir`` when the block completes
    and vanishes if it raises: a reader never finds half an export, engine set or report."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists and is not empty: choose a new directory or remove it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.parent / f".{out_dir.name}.partial-{secrets.token_hex(4)}"
    # Created like any folder (0777 less the umask), not 0700 as mkdtemp does: exports and reports
    # are read by other users and by cluster workers on a shared file system.
    staging.mkdir()
    try:
        yield staging
        if out_dir.exists():
            out_dir.rmdir()
        staging.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
