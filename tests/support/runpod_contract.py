"""The project's own RunPod contract (`infra/runpod/api-contract.yaml`): load it, check its
format, turn it into an OpenAPI 3.1 document for openapi-core (which the emulator validates
every request and answer with), and compare it with RunPod's full OpenAPI document.

The contract's format is described at the top of the YAML file. `load()` refuses a contract that
does not follow it (an unknown key, a type that is not defined, a source that is not listed),
naming every problem at once, so a typo cannot silently loosen the emulator's checks.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

import yaml

CONTRACT_PATH = Path(__file__).resolve().parents[2] / "infra" / "runpod" / "api-contract.yaml"
SCALARS = frozenset({"string", "integer", "number", "boolean"})
KINDS = SCALARS | {"array", "map", "object"}
PROBLEM_MEDIA_TYPE = "application/problem+json"
_FIELD_KEYS = frozenset(
    {
        "type", "required", "nullable", "enum", "minimum", "minLength", "maxLength", "maxItems",
        "pattern", "format", "items", "values", "fields", "open", "source", "at",
    }
)  # fmt: skip
_CONSTRAINTS = ("enum", "minimum", "minLength", "maxLength", "maxItems", "pattern", "format")
_TOP_KEYS = frozenset({"format", "api", "server", "auth", "sources", "types", "operations"})
_SOURCE_KEYS = frozenset({"title", "url", "published", "read"})
_TYPE_KEYS = frozenset({"source", "at", "fields", "open"})
_OP_KEYS = frozenset({"method", "path", "source", "at", "query", "request", "responses", "errors"})
_METHODS = frozenset({"GET", "POST", "PATCH", "PUT", "DELETE"})
FORMAT = "llm-endpoint-api-contract/1"

Json = dict[str, Any]


class ContractError(ValueError):
    """The contract file does not follow its own format."""


# -- loading and checking the format ---------------------------------------------------------


def load(path: Path = CONTRACT_PATH) -> Json:
    contract = yaml.safe_load(path.read_text())
    problems = format_problems(contract)
    if problems:
        raise ContractError(f"{path}: " + "; ".join(problems))
    return dict(contract)


def format_problems(contract: Any) -> list[str]:
    """Everything in `contract` that breaks the format, as readable lines (empty: fine)."""
    if not isinstance(contract, dict):
        return ["the contract is not a mapping"]
    problems = _unknown(contract, _TOP_KEYS, "top level")
    if contract.get("format") != FORMAT:
        problems.append(f"format must be {FORMAT!r}")
    sources = contract.get("sources") or {}
    for name, source in sources.items():
        problems += _unknown(source, _SOURCE_KEYS, f"sources.{name}")
        problems += [f"sources.{name}: {k} missing" for k in _SOURCE_KEYS if k not in source]
    types = contract.get("types") or {}
    for name, spec in types.items():
        where = f"types.{name}"
        problems += _unknown(spec, _TYPE_KEYS, where) + _sourced(spec, sources, where)
        problems += _fields_problems(spec.get("fields") or {}, types, sources, where, False)
    for op_id, op in (contract.get("operations") or {}).items():
        problems += _operation_problems(op, types, sources, f"operations.{op_id}")
    return problems


def _unknown(obj: Any, allowed: frozenset[str], where: str) -> list[str]:
    if not isinstance(obj, dict):
        return [f"{where}: not a mapping"]
    return [f"{where}: unknown key {k!r}" for k in obj if k not in allowed]


def _sourced(part: Json, sources: Json, where: str) -> list[str]:
    if part.get("source") not in sources:
        return [f"{where}: source {part.get('source')!r} is not in `sources`"]
    if not isinstance(part.get("at"), str) or not part["at"]:
        return [f"{where}: `at` must say where in the source (a JSON pointer, or a page)"]
    return []


def _operation_problems(op: Json, types: Json, sources: Json, where: str) -> list[str]:
    problems = _unknown(op, _OP_KEYS, where) + _sourced(op, sources, where)
    if op.get("method") not in _METHODS:
        problems.append(f"{where}: method {op.get('method')!r} is not one of {sorted(_METHODS)}")
    if not str(op.get("path", "")).startswith("/"):
        problems.append(f"{where}: path must start with /")
    for name, field in (op.get("query") or {}).items():
        at = f"{where}.query.{name}"
        problems += _field_problems(field, types, sources, at, True)
        if isinstance(field, dict) and field.get("type") not in SCALARS:
            problems.append(f"{at}: a query parameter is a {'/'.join(sorted(SCALARS))}")
    if "request" in op:
        problems += _unknown(op["request"], frozenset({"fields"}), f"{where}.request")
        fields = op["request"].get("fields") or {}
        problems += _fields_problems(fields, types, sources, f"{where}.request", True)
    for status, answer in (op.get("responses") or {}).items():
        at = f"{where}.responses.{status}"
        if not re.fullmatch(r"[1-5]\d\d", str(status)):
            problems.append(f"{at}: not an HTTP status")
        problems += _unknown(answer, frozenset({"type", "fields", "empty"}), at)
        if "type" in answer and answer["type"] not in types:
            problems.append(f"{at}: type {answer['type']!r} is not in `types`")
        problems += _fields_problems(answer.get("fields") or {}, types, sources, at, False)
    if op.get("errors") not in types:
        problems.append(f"{where}: errors type {op.get('errors')!r} is not in `types`")
    return problems


def _fields_problems(
    fields: Json, types: Json, sources: Json, where: str, in_request: bool
) -> list[str]:
    problems: list[str] = []
    for name, field in fields.items():
        problems += _field_problems(field, types, sources, f"{where}.{name}", in_request)
    return problems


def _field_problems(
    field: Any, types: Json, sources: Json, where: str, in_request: bool
) -> list[str]:
    problems = _unknown(field, _FIELD_KEYS, where)
    if problems:
        return problems
    kind = field.get("type")
    if kind not in KINDS and kind not in types:
        return [f"{where}: type {kind!r} is neither one of {sorted(KINDS)} nor in `types`"]
    if kind in types and in_request:
        problems.append(f"{where}: requests spell out their fields (no named types)")
    if field.get("open") and in_request:
        problems.append(f"{where}: request objects are closed (RunPod refuses unknown fields)")
    if "source" in field or "at" in field:
        problems += _sourced(field, sources, where)
    for key, needs in (("items", "array"), ("values", "map"), ("fields", "object")):
        if (key in field) != (kind == needs):
            problems.append(f"{where}: `{key}` goes with type {needs} and only there")
    for key in ("items", "values"):
        if key in field:
            problems += _field_problems(field[key], types, sources, f"{where}[]", in_request)
    problems += _fields_problems(field.get("fields") or {}, types, sources, where, in_request)
    return problems


# -- compiling to OpenAPI for openapi-core ---------------------------------------------------


def to_openapi(contract: Json, without: frozenset[str] = frozenset()) -> Json:
    """An OpenAPI 3.1 document that says exactly what the contract says: request objects
    closed (`additionalProperties: false`), answer objects open. Parts and fields whose source
    is in `without` are left out (an API as it was before those documents)."""
    contract = _without(contract, without)
    paths: Json = {}
    for op_id, op in contract["operations"].items():
        paths.setdefault(op["path"], {})[op["method"].lower()] = _operation(op_id, op)
    schemas = {
        name: _object(spec.get("fields") or {}, closed=False)
        for name, spec in contract["types"].items()
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": f"{contract['api']} (llm-endpoint's contract)", "version": FORMAT},
        "servers": [{"url": contract["server"]}],
        "security": [{"bearerAuth": []}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
        },
    }


def _without(contract: Json, sources: frozenset[str]) -> Json:
    """A copy of the contract without the parts and fields that come from `sources`."""

    def keep(part: Any) -> bool:
        return not (isinstance(part, dict) and part.get("source") in sources)

    def prune(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: prune(v) for k, v in node.items() if keep(v)}
        return node

    return dict(prune(contract))


def _operation(op_id: str, op: Json) -> Json:
    params = [
        {"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
        for n in re.findall(r"\{(\w+)\}", op["path"])
    ]
    params += [
        {
            "name": n,
            "in": "query",
            "required": bool(f.get("required")),
            "schema": _schema(f, closed=True),
        }
        for n, f in (op.get("query") or {}).items()
    ]
    responses: Json = {}
    for status, answer in op["responses"].items():
        responses[str(status)] = _answer(answer)
    error = {"$ref": f"#/components/schemas/{op['errors']}"}
    responses["default"] = {
        "description": "an error (RFC 9457 problem)",
        "content": {PROBLEM_MEDIA_TYPE: {"schema": error}},
    }
    out: Json = {"operationId": op_id, "parameters": params, "responses": responses}
    if "request" in op:
        body = _object(op["request"].get("fields") or {}, closed=True)
        out["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return out


def _answer(answer: Json) -> Json:
    if answer.get("empty"):
        return {"description": "no body"}
    if "type" in answer:
        schema: Json = {"$ref": f"#/components/schemas/{answer['type']}"}
    else:
        schema = _object(answer.get("fields") or {}, closed=False)
    return {"description": "success", "content": {"application/json": {"schema": schema}}}


def _object(fields: Json, *, closed: bool) -> Json:
    schema: Json = {
        "type": "object",
        "properties": {name: _schema(f, closed=closed) for name, f in fields.items()},
        "additionalProperties": not closed,
    }
    required = [name for name, f in fields.items() if f.get("required")]
    if required:
        schema["required"] = required
    return schema


def _schema(field: Json, *, closed: bool) -> Json:
    kind = field["type"]
    if kind == "object":
        schema = _object(field.get("fields") or {}, closed=closed)
    elif kind == "array":
        schema = {"type": "array", "items": _schema(field["items"], closed=closed)}
    elif kind == "map":
        schema = {"type": "object", "additionalProperties": _schema(field["values"], closed=closed)}
    elif kind in SCALARS:
        schema = {"type": kind}
    else:
        schema = {"$ref": f"#/components/schemas/{kind}"}
    for key in _CONSTRAINTS:
        if key in field:
            schema[key] = field[key]
    if field.get("nullable"):
        if "$ref" in schema:
            return {"anyOf": [schema, {"type": "null"}]}
        schema["type"] = [schema["type"], "null"]
        if "enum" in schema:
            schema["enum"] = [*schema["enum"], None]
    return schema


_openapi_lock = threading.Lock()
_openapi_cache: dict[frozenset[str], Json] = {}


def openapi_document(without: frozenset[str] = frozenset()) -> Json:
    """The contract as OpenAPI (without the parts from `without`), built once per process."""
    with _openapi_lock:
        if without not in _openapi_cache:
            _openapi_cache[without] = to_openapi(load(), without)
        return _openapi_cache[without]
