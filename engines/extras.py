"""The optional parts of rvrt-deploy and what each needs.

A serving install (``pip install rvrt-deploy``) runs exports on ONNX Runtime; exporting,
validating and eager PyTorch need the ``[export]`` extra, Ray workers the ``[cluster]`` one.
What needs a missing extra stops before any work with one line saying how to get it.
"""

from __future__ import annotations

from importlib.util import find_spec

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


def require_extra(extra: str, action: str) -> None:
    """Raise :class:`MissingExtra` naming ``action``, what is missing and the install command."""
    missing = missing_modules(extra)
    if missing:
        raise MissingExtra(f"{action} needs {' and '.join(missing)}: pip install 'rvrt-deploy[{extra}]'")
