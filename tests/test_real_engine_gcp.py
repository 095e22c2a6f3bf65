"""The GCP stack through the real Pulumi engine, as far as it goes here.

The `gcp` provider plugin is bridged from Terraform and cannot be built from the Go module proxy
(docs/facts/pulumi.md, "Building the CLI"), so `pulumi preview` of the dev stack must stop at the
first Google Cloud resource, with exactly the engine's "plugin not found" error and nothing
else: then every line of our program before that resource (config loading and validation, the
stack's API key, the naming, the startup-script rendering done before registration) has run
under the real engine. The GCP resources themselves are tested under mocks
(tests/test_gcp_stack.py).
"""

from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path

import pytest

from tests.support.pulumi_cli import PulumiWorkspace, requires_cli
from tests.support.runpod_testing import ENDPOINT_KEY

pytestmark = [requires_cli, pytest.mark.timeout(600)]

# The first resource plugin the program needs and the engine cannot find (pulumi-gcp's
# package names the plugin version it wants, so the message carries it too).
MISSING_GCP = re.compile(
    r"error: no resource plugin 'pulumi-resource-gcp' found in the workspace at version "
    r"v(?P<version>[0-9.]+) or on your \$PATH"
)
ERROR_LINE = re.compile(r"^\s*error: .*$", re.MULTILINE)
# A traceback frame in our code (the copy's infra/, scripts/ or __main__.py).
OUR_FRAME = re.compile(r'File "[^"]*/project/(infra|scripts|__main__)')


@pytest.fixture
def ws(tmp_path: Path) -> PulumiWorkspace:
    workspace = PulumiWorkspace.create(tmp_path)
    workspace.copy_stack_file("dev")
    workspace.run("stack", "init", "dev")
    workspace.run("config", "set", "--stack", "dev", "--secret", "apiKey", stdin=ENDPOINT_KEY)
    return workspace


def test_dev_stack_runs_until_the_missing_gcp_plugin(ws: PulumiWorkspace):
    preview = ws.run("preview", "--stack", "dev", check=False)
    assert preview.code != 0
    missing = MISSING_GCP.search(preview.output)
    assert missing, preview.output
    # The plugin version the installed pulumi-gcp package asks for.
    assert missing["version"] == version("pulumi-gcp")
    # That is the only error, and nothing of ours failed or was cut short. (When the engine
    # stops, it interrupts the program: a KeyboardInterrupt traceback from Pulumi's runner may
    # follow, never one through our code.)
    errors = {line.strip() for line in ERROR_LINE.findall(preview.output)}
    assert errors == {missing[0]}, preview.output
    assert not OUR_FRAME.search(preview.output), preview.output
    assert ENDPOINT_KEY not in preview.output


def test_a_config_error_stops_preview_with_our_message_before_any_plugin(ws: PulumiWorkspace):
    ws.run("config", "set", "--stack", "dev", "--path", "llm-endpoint:gcp.zone", "mars-north1-a")
    preview = ws.run("preview", "--stack", "dev", check=False)
    assert preview.code != 0
    assert "mars-north1-a" in preview.output, preview.output
    assert not MISSING_GCP.search(preview.output), preview.output
    assert "Traceback" not in preview.output, preview.output
    assert not OUR_FRAME.search(preview.output), preview.output


def test_group_bad_inputs_stop_preview_in_one_message_before_any_plugin(ws: PulumiWorkspace):
    """The dev stack pins a zone and a 45-minute ready deadline; with replicas 3 and a quota of
    2 GPUs, three things are wrong for a group, and preview names every key, value and fix at
    once."""
    for key, text in (("replicas", "3"), ("gpuQuota", "2")):
        ws.run("config", "set", "--stack", "dev", "--path", f"llm-endpoint:gcp.{key}", text)
    preview = ws.run("preview", "--stack", "dev", check=False)
    assert preview.code != 0
    assert "Invalid stack configuration (3 problems)" in preview.output, preview.output
    for problem, fix in (
        ("llm-endpoint:gcp.zone = 'us-central1-a'", "set gcp.region: us-central1"),
        ("llm-endpoint:gcp.readyTimeoutMinutes = 45", "at most 25"),
        ("llm-endpoint:gcp.replicas = 3", "gcp.gpuQuota is 2"),
    ):
        assert problem in preview.output and fix in preview.output, preview.output
    assert not MISSING_GCP.search(preview.output), preview.output
    assert "Traceback" not in preview.output, preview.output
    assert not OUR_FRAME.search(preview.output), preview.output
