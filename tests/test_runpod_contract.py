"""The project's own RunPod contract (infra/runpod/api-contract.yaml).

Always: the contract follows its format, the emulator enforces it on requests and answers, and
the comparison with a vendor document finds each kind of mismatch (on a small document written
here). When a copy of RunPod's full OpenAPI document is available, one test compares the
contract with it; without one, that test is skipped and says why. The copy is looked for at
$RUNPOD_OPENAPI_DOCUMENT, else in the team's reference folder beside the project
(../shared/reference/runpod-rest-v2-openapi.json). Nothing else in the repository needs it.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support import runpod_conformance, runpod_contract
from tests.support.runpod_emulator import FakeClock, RunpodEmulator

ROOT = Path(__file__).resolve().parents[1]
DOCUMENT_ENV = "RUNPOD_OPENAPI_DOCUMENT"
BESIDE_THE_PROJECT = ROOT.parent / "shared" / "reference" / "runpod-rest-v2-openapi.json"
OPENAPI_SOURCE = "runpod-openapi-2026-08"
KEY = "emulator-key-for-this-test-000000"


def vendor_document() -> Path | None:
    given = os.environ.get(DOCUMENT_ENV)
    if given:
        path = Path(given)
        assert path.is_file(), f"{DOCUMENT_ENV}={given} is not a file"
        return path
    return BESIDE_THE_PROJECT if BESIDE_THE_PROJECT.is_file() else None


def test_contract_conforms_to_runpods_openapi_document():
    path = vendor_document()
    if path is None:
        pytest.skip(
            f"no copy of RunPod's OpenAPI document: set {DOCUMENT_ENV} to one, or put it at "
            f"{BESIDE_THE_PROJECT}; the contract's own checks ran without it"
        )
    contract = runpod_contract.load()
    result = runpod_conformance.compare(contract, json.loads(path.read_text()), OPENAPI_SOURCE)
    assert result.problems == []
    # Every operation named as coming from that document was compared.
    compared = [op for op in contract["operations"].values() if op["source"] == OPENAPI_SOURCE]
    assert len(compared) >= 7


# -- the contract's format -------------------------------------------------------------------


def test_the_shipped_contract_follows_its_format_and_compiles():
    contract = runpod_contract.load()
    assert runpod_contract.format_problems(contract) == []
    spec = runpod_contract.to_openapi(contract)
    ops = {(m.upper(), p) for p, item in spec["paths"].items() for m in item}
    assert ("POST", "/v2/pods") in ops and ("DELETE", "/v2/pods/{id}") in ops
    for name, part in [*contract["types"].items(), *contract["operations"].items()]:
        source = contract["sources"][part["source"]]
        assert source["published"] and source["read"], name


@pytest.mark.parametrize(
    ("mutate", "problem"),
    [
        (lambda c: c["types"]["Pod"]["fields"]["id"].update(requird=True), "unknown key 'requird'"),
        (lambda c: c["types"]["Pod"]["fields"]["id"].update(type="str"), "type 'str'"),
        (lambda c: c["operations"]["getPod"].update(source="a-blog"), "source 'a-blog'"),
        (lambda c: c["operations"]["getPod"].update(errors="Oops"), "errors type 'Oops'"),
        (
            lambda c: c["operations"]["createPod"]["request"]["fields"].update(x={"type": "Pod"}),
            "no named types",
        ),
        (
            lambda c: c["operations"]["createPod"]["request"]["fields"]["gpu"].update(open=True),
            "request objects are closed",
        ),
        (lambda c: c["sources"][OPENAPI_SOURCE].pop("read"), "read missing"),
    ],
)
def test_format_mistakes_are_named(mutate, problem):
    contract = copy.deepcopy(runpod_contract.load())
    mutate(contract)
    problems = runpod_contract.format_problems(contract)
    assert any(problem in p for p in problems), problems


def test_load_refuses_a_contract_with_every_problem_named(tmp_path):
    text = runpod_contract.CONTRACT_PATH.read_text()
    bad = tmp_path / "contract.yaml"
    bad.write_text(text.replace("format: llm-endpoint", "format: other").replace("at: ", "att: "))
    with pytest.raises(runpod_contract.ContractError) as err:
        runpod_contract.load(bad)
    assert "format must be" in str(err.value) and "unknown key 'att'" in str(err.value)


# -- the emulator enforces it ----------------------------------------------------------------


def test_emulator_refuses_request_fields_and_operations_outside_the_contract():
    auth = {"Authorization": f"Bearer {KEY}"}
    with RunpodEmulator(api_key=KEY, clock=FakeClock()) as emu:
        pod_id = emu.add_pod("llm-endpoint-x-0-00000000")
        # A field RunPod documents but the project does not use is outside the contract too.
        patch = requests.patch(
            f"{emu.base_url}/v2/pods/{pod_id}", json={"locked": True}, headers=auth, timeout=10
        )
        nested = requests.post(
            f"{emu.base_url}/v2/pods",
            json={"name": "x", "image": "i:1", "gpu": {"id": "g", "bogus": 1}},
            headers=auth,
            timeout=10,
        )
        unlisted = requests.get(f"{emu.base_url}/v2/billing/pods", headers=auth, timeout=10)
        assert [patch.status_code, nested.status_code, unlisted.status_code] == [422, 422, 422]
        assert "locked" in " ".join(patch.json()["errors"])
        assert "bogus" in " ".join(nested.json()["errors"])
        assert len(emu.violations) == 3
        emu.pods.clear()


def test_emulator_records_answers_that_break_the_contract(monkeypatch):
    with RunpodEmulator(api_key=KEY, clock=FakeClock()) as emu:
        pod_id = emu.add_pod("llm-endpoint-x-0-00000000")
        real_view = emu._view

        def view_without_started_at(pid: str, pod: Any) -> dict[str, Any] | None:
            v = real_view(pid, pod)
            return None if v is None else {k: x for k, x in v.items() if k != "startedAt"}

        monkeypatch.setattr(emu, "_view", view_without_started_at)
        answer = requests.get(
            f"{emu.base_url}/v2/pods/{pod_id}",
            headers={"Authorization": f"Bearer {KEY}"},
            timeout=10,
        )
        assert answer.status_code == 200
        assert len(emu.violations) == 1 and "startedAt" in emu.violations[0]
        emu.pods.clear()


# -- the comparison finds mismatches (on a small vendor document written here) ----------------


def _vendor_doc() -> dict[str, Any]:
    problem = {
        "type": "object",
        "required": ["title", "status", "detail"],
        "properties": {
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "errors": {"type": "array", "items": {"type": "string"}},
        },
    }
    thing = {
        "type": "object",
        "required": ["id", "state"],
        "properties": {
            "id": {"type": "string"},
            "state": {"type": "string", "enum": ["ON", "OFF"]},
            "since": {"type": ["string", "null"], "format": "date-time"},
        },
    }
    create = {
        "type": "object",
        "required": ["name"],
        "unevaluatedProperties": False,
        "properties": {
            "name": {"type": "string", "minLength": 1},
            "size": {"type": "integer", "minimum": 10},
            "tags": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    }
    errors = {"content": {"application/problem+json": {"schema": {"$ref": "#/c/Problem"}}}}
    ok = {"content": {"application/json": {"schema": {"$ref": "#/c/Thing"}}}}
    return {
        "c": {"Problem": problem, "Thing": thing},
        "paths": {
            "/v9/things": {
                "post": {
                    "operationId": "makeThing",
                    "requestBody": {"content": {"application/json": {"schema": create}}},
                    "responses": {"201": ok, "default": errors},
                }
            }
        },
    }


def _contract() -> dict[str, Any]:
    return {
        "sources": {"doc": {}},
        "types": {
            "Problem": {
                "source": "doc",
                "at": "#/c/Problem",
                "fields": {"detail": {"type": "string", "required": True}},
            },
            "Thing": {
                "source": "doc",
                "at": "#/c/Thing",
                "fields": {
                    "id": {"type": "string", "required": True},
                    "state": {"type": "string", "enum": ["ON", "OFF"], "required": True},
                    "since": {"type": "string", "nullable": True, "format": "date-time"},
                },
            },
        },
        "operations": {
            "makeThing": {
                "method": "POST",
                "path": "/v9/things",
                "source": "doc",
                "at": "#/paths/~1v9~1things/post",
                "request": {
                    "fields": {
                        "name": {"type": "string", "required": True, "minLength": 1},
                        "size": {"type": "integer", "minimum": 10},
                        "tags": {"type": "map", "values": {"type": "string"}},
                    }
                },
                "responses": {"201": {"type": "Thing"}},
                "errors": "Problem",
            }
        },
    }


def _problems(mutate) -> list[str]:
    contract = _contract()
    mutate(contract)
    return runpod_conformance.compare(contract, _vendor_doc(), "doc").problems


def test_a_faithful_contract_has_no_problems():
    assert _problems(lambda c: None) == []


def _sent(c: dict[str, Any]) -> dict[str, Any]:
    fields: dict[str, Any] = c["operations"]["makeThing"]["request"]["fields"]
    return fields


def _read(c: dict[str, Any]) -> dict[str, Any]:
    fields: dict[str, Any] = c["types"]["Thing"]["fields"]
    return fields


@pytest.mark.parametrize(
    ("mutate", "problem"),
    [
        (lambda c: _sent(c).update(colour={"type": "string"}), "colour: sent, but"),
        (lambda c: _sent(c)["name"].pop("required"), "name: the document requires it"),
        (lambda c: _sent(c)["size"].update(type="string"), "size: sent as ['string']"),
        (lambda c: _sent(c)["size"].pop("minimum"), "size: minimum must be at least"),
        (lambda c: _sent(c)["size"].update(minimum=5), "size: minimum must be at least"),
        (lambda c: _sent(c)["tags"]["values"].update(type="integer"), "tags{}: sent as"),
        (lambda c: _read(c).update(colour={"type": "string"}), "colour: read, but"),
        (lambda c: _read(c)["since"].update(required=True), "since: read as always there"),
        (lambda c: _read(c)["since"].pop("nullable"), "since: read as ['string']"),
        (lambda c: _read(c)["state"].update(enum=["ON"]), "state: the document allows values"),
        (lambda c: _read(c)["since"].update(format="date"), "since: format 'date'"),
        (
            lambda c: c["operations"]["makeThing"].update(path="/v9/thing"),
            "/v9/thing is not in the document",
        ),
        (
            lambda c: c["operations"]["makeThing"]["responses"].update({"200": {"type": "Thing"}}),
            "status 200 is not documented",
        ),
        (
            lambda c: c["types"]["Problem"]["fields"].update(code={"type": "string"}),
            "code: read, but",
        ),
    ],
)
def test_each_kind_of_mismatch_is_found(mutate, problem):
    problems = _problems(mutate)
    assert any(problem in p for p in problems), problems


def test_fields_from_a_newer_document_are_listed_not_compared():
    contract = _contract()
    _sent(contract)["entrypoint"] = {
        "type": "array",
        "items": {"type": "string"},
        "source": "newer",
        "at": "#/x",
    }
    result = runpod_conformance.compare(contract, _vendor_doc(), "doc")
    assert result.problems == []
    assert result.not_compared == ["operations.makeThing.entrypoint (from newer)"]


def test_the_clients_secret_calls_are_inside_the_contract():
    from infra.runpod.client import RunpodClient

    with RunpodEmulator(api_key=KEY, clock=FakeClock()) as emu:
        client = RunpodClient(KEY, base_url=emu.base_url, sleep=lambda _s: None)
        assert client.find_secret("llm_endpoint_key") is None
        made = client.create_secret("llm_endpoint_key", "v" * 40, "the endpoint key")
        assert client.find_secret("llm_endpoint_key") == {**made}
        client.update_secret(made["id"], "w" * 40)
        assert client.delete_secret(made["id"]) is True
        assert client.delete_secret(made["id"]) is False  # 404: already gone
        bad = requests.post(
            f"{emu.base_url}/v2/account/secrets",
            json={"name": "has space", "value": "x"},
            headers={"Authorization": f"Bearer {KEY}"},
            timeout=10,
        )
        assert bad.status_code == 422  # the name pattern of RunPod's pages
        assert len(emu.violations) == 1 and "has space" in emu.violations[0]
