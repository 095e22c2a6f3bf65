"""The repository stands on its own.

Two guards: no file names the team's reference notes or the folder beside the project that held
them (the facts the code relies on live in docs/facts/, the RunPod contract in
infra/runpod/api-contract.yaml), except the one conformance test that may read RunPod's full
document from there and `.ci/run`, which passes that document's path on when it exists; and
`.ci/run`'s copy step gives the suite a tree with only the project's files, uncommitted edits
included, in an otherwise empty directory (the suite itself then runs there).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.support.project_files import ROOT, project_files, text_of

# Spelled in pieces so that this file does not match itself.
OUTSIDE = ("FACTS" + ".md", "../" + "shared", "shared" + "/reference")
ALLOWED = {
    Path("tests/test_runpod_contract.py"),  # the optional conformance test
    Path(".ci/run"),  # hands that test the document's path
}


def test_no_file_needs_anything_beside_the_project():
    offenders = []
    for path in project_files():
        rel = path.relative_to(ROOT)
        text = text_of(path)
        if text is None or rel in ALLOWED:
            continue
        offenders += [f"{rel}: {needle}" for needle in OUTSIDE if needle in text]
    assert offenders == []


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


def test_copy_step_takes_the_work_tree_and_nothing_else(tmp_path):
    repo = tmp_path / "work"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "kept.py").write_text("committed\n")
    (repo / "gone.py").write_text("deleted after the commit\n")
    (repo / ".gitignore").write_text(".venv/\n*.log\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "c")
    (repo / "pkg" / "kept.py").write_text("edited, not committed\n")
    (repo / "new.py").write_text("new, not added\n")
    (repo / "gone.py").unlink()
    (repo / ".venv").mkdir()
    (repo / ".venv" / "python").write_text("an environment\n")
    (repo / "debug.log").write_text("ignored\n")
    (tmp_path / "shared").mkdir()  # a folder beside the project must not come along
    dest = tmp_path / "empty" / "project"
    subprocess.run(["bash", str(ROOT / ".ci" / "copy-project"), str(dest)], cwd=repo, check=True)
    files = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert files == [".gitignore", "new.py", "pkg/kept.py"]
    assert (dest / "pkg" / "kept.py").read_text() == "edited, not committed\n"
    assert [p.name for p in dest.parent.iterdir()] == ["project"]


def test_copy_step_without_git_copies_the_tree_minus_environments(tmp_path):
    tree = tmp_path / "unpacked"
    (tree / ".venv").mkdir(parents=True)
    (tree / ".venv" / "python").write_text("an environment\n")
    (tree / "a.py").write_text("source\n")
    dest = tmp_path / "empty" / "project"
    subprocess.run(
        ["bash", str(ROOT / ".ci" / "copy-project"), str(dest)],
        cwd=tree,
        check=True,
        env={"PATH": "/usr/bin:/bin", "GIT_CEILING_DIRECTORIES": str(tmp_path)},
    )
    assert sorted(p.name for p in dest.rglob("*") if p.is_file()) == ["a.py"]
