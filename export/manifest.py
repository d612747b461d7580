"""The manifest of an export directory: what was exported, from what, and whether it was validated."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

from rvrt.config import RVRTConfig

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


class ArtifactError(ValueError):
    """An export or engine directory that cannot be served as asked."""


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


def write_manifest(directory: Path, manifest: dict) -> None:
    """Write atomically: a reader never sees half a manifest."""
    partial = directory / (MANIFEST + ".partial")
    partial.write_text(json.dumps(manifest, indent=2) + "\n")
    partial.replace(directory / MANIFEST)


def read_manifest(directory: str | os.PathLike) -> dict:
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
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        yield staging
        if out_dir.exists():
            out_dir.rmdir()
        staging.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
