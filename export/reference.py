"""The eager float32 model an export directory was made from: the reference of every check."""

from __future__ import annotations

import os
from pathlib import Path

from rvrt import build_model
from rvrt.model import RVRT

from rvrt_engines.manifest import ArtifactError, config_from_manifest, sha256_of


def reference_model(manifest: dict, directory: str | os.PathLike, checkpoint: str | os.PathLike | None = None) -> RVRT:
    """Rebuild the exported network: from ``checkpoint`` (its sha256 must be the one recorded at
    export) or, for a random-weights export, from the seed recorded in the manifest."""
    record = manifest["checkpoint"]
    config = config_from_manifest(manifest)
    if record.get("random_weights"):
        if checkpoint is not None:
            raise ArtifactError(f"{str(directory)!r} was exported from random weights; a checkpoint cannot be "
                                f"its reference (drop --checkpoint)")
        if record.get("seed") is None:
            raise ArtifactError(f"{str(directory)!r} was exported from random weights without a recorded seed: "
                                f"its eager reference cannot be rebuilt; export again with --random-weights --seed N")
        return build_model(manifest["task"], random_weights=True, config=config, seed=record["seed"])
    if checkpoint is None:
        raise ArtifactError(f"{str(directory)!r} was exported from checkpoint {record['file']!r}: pass it with "
                            f"--checkpoint so the export can be checked against it")
    digest = sha256_of(checkpoint)
    if digest != record["sha256"]:
        raise ArtifactError(f"checkpoint {str(checkpoint)!r} (sha256 {digest[:12]}...) is not the one "
                            f"{str(directory)!r} was exported from ({record['file']}, "
                            f"sha256 {record['sha256'][:12]}...)")
    return build_model(manifest["task"], Path(checkpoint), config=config)
