"""Every protocol citation in the code points at a file and heading under ``docs/protocols/``,
and nothing cites the protocol notes that live outside the repository."""

from __future__ import annotations

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "protocols"
OUTSIDE = "shared" + "/protocols"  # spelled in two parts so this file does not cite it
SKIP_DIRS = {".venv", ".git", "node_modules", "build", "dist", "__pycache__"}

# ``docs/protocols/deepgram.md``, "Close codes" — backticks, a line break or a ``#`` between the
# file and the quoted heading are allowed, so a citation can wrap in a comment or docstring.
CITATION = re.compile(r'docs/protocols/([\w.-]+\.md)`*(?:[ \t]*,[\s#]*"([^"\n]+)")?')
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$")
LABEL = re.compile(r"^§?[A-Z]?\d+(?:\.\d+)*\.?[ \t]+")


def source_files() -> list[Path]:
    """The repository's Python and Markdown files (no virtualenv, no build output), except this
    file, whose examples cite on purpose."""
    found = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info")
                   and not d.startswith(".")]
        found += [Path(folder, f) for f in files if f.endswith((".py", ".md"))]
    return sorted(p for p in found if p != Path(__file__).resolve())


def headings(markdown: str) -> set[str]:
    """Each heading's text, both whole (``5. Close codes``) and without its label
    (``Close codes``); lines inside fenced code blocks are not headings."""
    out: set[str] = set()
    fenced = False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        m = None if fenced else HEADING.match(line)
        if m:
            text = m.group(1)
            out.add(text)
            out.add(LABEL.sub("", text, count=1))
    return out


def citations(text: str) -> list[tuple[str, str | None]]:
    """(file name, heading or None) for every ``docs/protocols/...`` mention in ``text``."""
    return [(m.group(1), m.group(2)) for m in CITATION.finditer(text)]


def broken(text: str, docs: dict[str, set[str]]) -> list[str]:
    """What in ``text`` cites a missing protocol doc or a heading that doc does not have."""
    problems = []
    for name, heading in citations(text):
        if name not in docs:
            problems.append(f"docs/protocols/{name} does not exist")
        elif heading is not None and heading not in docs[name]:
            problems.append(f'docs/protocols/{name} has no heading "{heading}"')
    return problems


def load_docs() -> dict[str, set[str]]:
    return {p.name: headings(p.read_text(encoding="utf-8")) for p in DOCS.glob("*.md")}


# --- the checker itself ------------------------------------------------------------------------


def test_headings_are_read_with_and_without_their_label() -> None:
    md = "# Title\n\n## 5. Close codes\n\n```\n## not a heading\n```\n### A6. v3 error frames\n"
    assert headings(md) == {"Title", "5. Close codes", "Close codes", "A6. v3 error frames",
                            "v3 error frames"}


def test_citations_are_found_across_backticks_and_line_breaks() -> None:
    text = ('x  # ``docs/protocols/deepgram.md``, "Close codes"\n'
            '"""Facts: ``docs/protocols/aws-transcribe.md``,\n    "Event-stream framing"."""\n'
            "see docs/protocols/volcengine.md for the frames\n")
    assert citations(text) == [("deepgram.md", "Close codes"),
                               ("aws-transcribe.md", "Event-stream framing"),
                               ("volcengine.md", None)]


def test_a_missing_file_or_heading_is_reported() -> None:
    docs = {"deepgram.md": {"Close codes"}}
    assert broken('docs/protocols/deepgram.md, "Close codes"', docs) == []
    assert broken('docs/protocols/deepgram.md, "Keep-alive"', docs) == [
        'docs/protocols/deepgram.md has no heading "Keep-alive"']
    assert broken("docs/protocols/nope.md", docs) == ["docs/protocols/nope.md does not exist"]


# --- the repository ----------------------------------------------------------------------------


def test_the_protocol_docs_exist() -> None:
    names = {p.name for p in DOCS.glob("*.md")}
    assert {"README.md", "aws-transcribe.md", "assemblyai.md", "deepgram.md", "dashscope.md",
            "volcengine.md"} <= names


def test_the_index_lists_every_protocol_doc() -> None:
    index = (DOCS / "README.md").read_text(encoding="utf-8")
    missing = [p.name for p in DOCS.glob("*.md")
               if p.name != "README.md" and f"({p.name})" not in index]
    assert missing == []


def test_no_file_cites_notes_outside_the_repository() -> None:
    offenders = [str(p.relative_to(ROOT)) for p in source_files()
                 if OUTSIDE in p.read_text(encoding="utf-8")]
    assert offenders == []


def test_every_citation_resolves() -> None:
    docs = load_docs()
    problems = {str(p.relative_to(ROOT)): found for p in source_files()
                if (found := broken(p.read_text(encoding="utf-8"), docs))}
    assert problems == {}


def test_the_vendor_code_cites_the_docs() -> None:
    """Each vendor folder and each emulator that has a protocol doc cites it by heading."""
    cited: set[str] = set()
    for path in [*(ROOT / "workers" / "vendors").rglob("*.py"),
                 *(ROOT / "tests" / "emulators").glob("*.py")]:
        cited |= {name for name, heading in citations(path.read_text(encoding="utf-8"))
                  if heading is not None}
    assert {"aws-transcribe.md", "assemblyai.md", "deepgram.md", "dashscope.md",
            "volcengine.md"} <= cited
