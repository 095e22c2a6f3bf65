"""The documentation holds together: every `docs/facts/<page>.md ("Section")` citation in the
repository names a page and a section that exist (the section's name, or the start of it), and
every relative link in README.md and docs/ points at a file that exists."""

from __future__ import annotations

import re
from pathlib import Path

from tests.support.project_files import project_files, text_of

ROOT = Path(__file__).resolve().parents[1]
# `docs/facts/vllm.md ("API key")`, `docs/facts/vllm.md, "API key"` or `docs/facts/vllm.md
# "API key"`; a section name may be wrapped over comment lines.
CITATION = re.compile(r'docs/facts/([a-z]+)\.md`?,?[\s#]*\(?"([^"]+)"')
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def headings(page: Path) -> set[str]:
    return {
        line.lstrip("#").strip()
        for line in page.read_text().splitlines()
        if re.match(r"^#{2,} ", line)
    }


def _section_name(raw: str) -> str:
    """The cited section with comment markers and line wraps taken out."""
    return " ".join(re.sub(r"\n\s*(#|\*|//)?\s*", " ", raw).split())


def citations() -> list[tuple[Path, str, str]]:
    found = []
    for path in project_files():
        text = text_of(path)
        if text is None or path.suffix == ".lock" or path.name == "test_docs.py":
            continue
        for m in CITATION.finditer(text):
            found.append((path, m.group(1), _section_name(m.group(2))))
    return found


def test_the_code_cites_facts_pages():
    # A guard against a regex that silently matches nothing.
    assert len(citations()) >= 30


def test_every_facts_citation_names_an_existing_section():
    problems = []
    for path, page, section in citations():
        target = ROOT / "docs" / "facts" / f"{page}.md"
        if not target.is_file():
            problems.append(f"{path.relative_to(ROOT)}: no page docs/facts/{page}.md")
        elif not any(h.startswith(section) for h in headings(target)):
            problems.append(f'{path.relative_to(ROOT)}: docs/facts/{page}.md has no "{section}"')
    assert problems == []


def test_every_facts_section_names_its_source():
    missing = []
    for page in sorted((ROOT / "docs" / "facts").glob("*.md")):
        if page.name == "README.md":
            continue
        sections = re.split(r"\n(?=## )", page.read_text())[1:]
        missing += [f"{page.name}: {s.splitlines()[0]}" for s in sections if "Source:" not in s]
    assert missing == []


def test_relative_links_in_readme_and_docs_resolve():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    broken = []
    for page in pages:
        for m in LINK.finditer(page.read_text()):
            target = m.group(1)
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert broken == []
