"""The README's front page holds to the code: its runtime table is the registry's, and its docs/ links lead
somewhere.

The runtime table (under "## Runtimes") must list exactly the runtimes of
:data:`rvrt_engines.runtimes.RUNTIMES`, each with its precisions (in the registry's order, the default first) and
whether its default record needs a GPU: adding a runtime without its README row fails here. Every relative link
of README.md and of the docs/ pages must point to an existing file, and an anchor (#...) to a heading of it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rvrt_engines.runtimes import PRECISION_NAMES, RUNTIMES

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def section(text: str, title: str) -> str:
    """The body of the ``## title`` section of a Markdown text."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"README.md has no '## {title}' section"
    return match.group(1)


def table(text: str) -> list[dict[str, str]]:
    """The first Markdown table of ``text`` as rows of {header: cell} (cells stripped; ``\\|`` kept as ``|``)."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    assert len(lines) >= 2, "no table"

    def cells(line: str) -> list[str]:
        return [cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]

    header = cells(lines[0])
    return [dict(zip(header, cells(line), strict=True)) for line in lines[2:]]


def column(row: dict[str, str], word: str) -> str:
    """The cell of ``row`` whose header contains ``word``."""
    names = [name for name in row if word in name]
    assert len(names) == 1, f"the runtime table needs one column headed with {word!r}, has {list(row)}"
    return row[names[0]]


def unquoted(cell: str) -> str:
    return cell.replace("`", "").strip()


def readme_runtimes() -> dict[str, dict]:
    rows = table(section(README.read_text(), "Runtimes"))
    runtimes = {}
    for row in rows:
        name = unquoted(column(row, "--runtime"))
        precisions = tuple(PRECISION_NAMES.get(p.strip(), p.strip())
                           for p in unquoted(column(row, "--precision")).split(","))
        gpu = unquoted(column(row, "GPU")).split()[0].strip(",;()").lower()
        assert gpu in ("yes", "no"), f"runtime {name}: the GPU column begins {gpu!r}, expected yes or no"
        assert name not in runtimes, f"runtime {name} has two rows"
        runtimes[name] = {"label": unquoted(row.get("runtime", "")),
                          "precisions": precisions, "needs_gpu": gpu == "yes"}
    return runtimes


def test_the_runtime_table_lists_exactly_the_registry():
    listed = readme_runtimes()
    assert sorted(listed) == sorted(RUNTIMES), (
        f"README.md's runtime table lists {sorted(listed)}, the registry (rvrt_engines.runtimes.RUNTIMES) holds "
        f"{sorted(RUNTIMES)}: give every runtime its row, and no other")
    for name, record in RUNTIMES.items():
        row = listed[name]
        assert row["precisions"] == tuple(record.precisions), (
            f"README.md: runtime {name} serves {', '.join(record.precisions)} (default first), the table says "
            f"{', '.join(row['precisions'])}")
        assert row["needs_gpu"] == record().needs_gpu, (
            f"README.md: runtime {name} {'needs' if record().needs_gpu else 'does not need'} a GPU by default")
        assert row["label"] == record.label, f"README.md: runtime {name} is called {record.label!r}"


def links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)   # not the code blocks
    text = re.sub(r"`[^`\n]*`", "", text)                            # nor inline code
    return [target for target in LINK.findall(text) if "://" not in target and not target.startswith("mailto:")]


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation but hyphens and underscores dropped, spaces -> -."""
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {slug(match) for match in re.findall(r"^#{1,6} (.+)$", text, re.M)}


def test_the_readme_links_every_docs_page_and_each_exists():
    targets = {target.split("#")[0] for target in links(README)}
    docs = {str(path.relative_to(ROOT)) for path in (ROOT / "docs").glob("*.md")}
    assert docs, "no docs/ pages"
    assert docs <= targets, f"README.md links no page of {sorted(docs - targets)}"
    missing = sorted(t for t in targets if t.startswith("docs/") and not (ROOT / t).is_file())
    assert not missing, f"README.md links pages that do not exist: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_leads_to_a_file_and_heading(page):
    broken = []
    for target in links(page):
        path, _, anchor = target.partition("#")
        destination = (page.parent / path).resolve() if path else page
        if not destination.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and destination.suffix == ".md" and anchor not in anchors(destination):
            broken.append(f"{target} (no such heading)")
    assert not broken, f"{page.relative_to(ROOT)}: broken links: {', '.join(broken)}"
