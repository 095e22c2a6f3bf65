"""Which state backend the real CLI uses for this project (docs/configuration.md, "State
backends"): Pulumi.yaml's `backend.url` wins over `pulumi login`, and PULUMI_BACKEND_URL wins over
both. Run on a copy whose Pulumi.yaml points at a temporary directory instead of `~`."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.pulumi_cli import PulumiWorkspace, requires_cli

pytestmark = [requires_cli, pytest.mark.timeout(300)]
SHIPPED_BACKEND = "file://~/.pulumi-llm-endpoint"


@pytest.fixture
def ws(tmp_path: Path) -> PulumiWorkspace:
    workspace = PulumiWorkspace.create(tmp_path)
    workspace.backend_env = False
    pulumi_yaml = workspace.project / "Pulumi.yaml"
    text = pulumi_yaml.read_text()
    assert SHIPPED_BACKEND in text
    pulumi_yaml.write_text(text.replace(SHIPPED_BACKEND, project_state(tmp_path).as_uri()))
    return workspace


def project_state(tmp: Path) -> Path:
    state = tmp / "project-state"
    state.mkdir(exist_ok=True)
    return state


def stacks_in(state: Path) -> list[str]:
    return sorted(p.name for p in state.glob(".pulumi/stacks/**/*.json"))


def test_pulumi_login_does_not_switch_the_backend_pulumi_yaml_names(
    ws: PulumiWorkspace, tmp_path: Path
):
    other = tmp_path / "login-state"
    other.mkdir()
    ws.run("login", other.as_uri())
    who = ws.run("whoami", "--verbose").output
    assert f"Backend URL: {project_state(tmp_path).as_uri()}" in who, who
    ws.run("stack", "init", "probe")
    assert stacks_in(project_state(tmp_path)) == ["probe.json"]
    assert stacks_in(other) == []


def test_backend_url_variable_wins_over_pulumi_yaml(ws: PulumiWorkspace, tmp_path: Path):
    shared = tmp_path / "team-state"
    shared.mkdir()
    ws.extra_env["PULUMI_BACKEND_URL"] = shared.as_uri()
    ws.run("stack", "init", "probe")
    assert stacks_in(shared) == ["probe.json"]
    assert stacks_in(project_state(tmp_path)) == []
