"""The project's own files, found by walking the tree (so it works in a copy without `.git`,
which is how `.ci/run` runs the suite): everything except version-control data, virtual
environments, caches and tools that are installed into the tree."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SKIPPED_DIRS = frozenset(
    {
        ".git", ".venv", "node_modules", "__pycache__", ".pytest_cache", ".mypy_cache",
        ".ruff_cache", ".actionlint",
    }
)  # fmt: skip


def project_files(root: Path = ROOT) -> Iterator[Path]:
    for here, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS)
        for name in sorted(files):
            yield Path(here) / name


def text_of(path: Path) -> str | None:
    """The file's text, or None for binary files."""
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        return None
    return data.decode("utf-8", errors="replace")
