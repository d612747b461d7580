"""The optional parts of rvrt-deploy and what each needs.

A serving install (``pip install rvrt-deploy``) runs exports on ONNX Runtime; exporting,
validating and eager PyTorch need the ``[export]`` extra, Ray workers the ``[cluster]`` one.
What needs a missing extra stops before any work with one line saying how to get it, in the
form that works for how this copy was installed: from an index by name, from a checkout (or a
wheel file) by its path, since the package is not on any index a checkout's user can reach.
"""

from __future__ import annotations

import json
import os
import shlex
import urllib.parse
import urllib.request
from importlib import metadata
from importlib.util import find_spec
from pathlib import Path

DISTRIBUTION = "rvrt-deploy"
EXTRAS = {
    "export": {"torch": "PyTorch", "onnxscript": "onnxscript", "polygraphy": "Polygraphy", "einops": "einops"},
    "cluster": {"ray": "Ray"},
}
"""extra -> {module it installs: the name users know it by}."""


class MissingExtra(ValueError):
    """Something asked for needs an optional part that is not installed (bad input: exit status 2)."""


def missing_modules(extra: str) -> list[str]:
    """The names (as users know them) of what ``extra`` installs and this environment lacks."""
    return [name for module, name in EXTRAS[extra].items() if find_spec(module) is None]


def installed_from() -> dict | None:
    """pip's record of where this copy came from (PEP 610 ``direct_url.json``), None for an
    index install. Every installed copy is looked at: run from a checkout, its ``*.egg-info``
    (which has no such record) comes first on the path and would hide the real one."""
    for dist in metadata.distributions():
        if (dist.metadata["Name"] or "").lower() == DISTRIBUTION:
            text = dist.read_text("direct_url.json")
            if text:
                try:
                    return json.loads(text)
                except ValueError:
                    return None
    return None


def install_command(extra: str, origin: dict | None = None) -> str:
    """``pip install ...`` adding ``extra`` to this copy as it was installed: ``-e 'CHECKOUT[extra]'``
    for an editable checkout (``.`` when it is the current folder), ``'PATH[extra]'`` for a source
    folder or a wheel file that is still there, a VCS URL as given, else the index name."""
    origin = installed_from() if origin is None else origin
    url = (origin or {}).get("url", "")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "file":
        path = Path(urllib.request.url2pathname(parts.path))
        if path.exists():
            shown = "." if path.is_dir() and path.resolve() == Path.cwd().resolve() else os.fspath(path)
            editable = "-e " if origin.get("dir_info", {}).get("editable") else ""
            return f"pip install {editable}{shlex.quote(f'{shown}[{extra}]')}"
    elif "vcs_info" in (origin or {}):
        requirement = f"{DISTRIBUTION}[{extra}] @ {origin['vcs_info']['vcs']}+{url}"
        return f"pip install {shlex.quote(requirement)}"
    return f"pip install '{DISTRIBUTION}[{extra}]'"


def require_extra(extra: str, action: str) -> None:
    """Raise :class:`MissingExtra` naming ``action``, what is missing and the install command."""
    missing = missing_modules(extra)
    if missing:
        raise MissingExtra(f"{action} needs {' and '.join(missing)}: {install_command(extra)}")
