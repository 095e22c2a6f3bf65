"""Compare the project's RunPod contract with RunPod's own OpenAPI document.

The contract may say less than RunPod's document (it lists only what the project uses), but
never something the document contradicts:
- every operation is in the document, at the place the contract names;
- every field the project sends exists there, with a type RunPod accepts and constraints at
  least as strict as RunPod's (so the emulator refuses whatever RunPod would), and every field
  RunPod requires is sent;
- every field the project reads from an answer exists there, accepts every type and value RunPod
  may send, and is read as always present only if RunPod always sends it;
- every success status the contract expects is documented, and error bodies match.

Only parts whose `source` is the document being compared are checked; a field that comes from a
newer document (its own `source`) is left out and listed by `not_compared`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

Json = dict[str, Any]
_OURS_TO_JSON = {"map": "object"}


@dataclass
class Node:
    """A RunPod schema with `$ref`, `allOf` and nullable `anyOf` resolved."""

    types: set[str] = field(default_factory=set)
    props: dict[str, Any] = field(default_factory=dict)
    required: set[str] = field(default_factory=set)
    constraints: dict[str, Any] = field(default_factory=dict)
    items: Any = None
    values: Any = None


def pointer(doc: Json, at: str) -> Any:
    """The part of `doc` at the JSON pointer `at` (`#/paths/~1v2~1pods/get`)."""
    node: Any = doc
    for raw in at.removeprefix("#/").split("/"):
        node = node[raw.replace("~1", "/").replace("~0", "~")]
    return node


def resolve(doc: Json, schema: Any) -> Node:
    node = Node()
    _merge(doc, schema, node)
    return node


def _merge(doc: Json, schema: Any, node: Node) -> None:
    if not isinstance(schema, dict):
        return
    if "$ref" in schema:
        _merge(doc, pointer(doc, schema["$ref"]), node)
    for part in schema.get("allOf", []):
        _merge(doc, part, node)
    for part in schema.get("anyOf", []) + schema.get("oneOf", []):
        if part.get("type") == "null":
            node.types.add("null")
        else:
            _merge(doc, part, node)
    kinds = schema.get("type")
    if kinds is not None:
        node.types |= {kinds} if isinstance(kinds, str) else set(kinds)
    node.props.update(schema.get("properties", {}))
    node.required |= set(schema.get("required", []))
    for key in ("enum", "minimum", "minLength", "maxLength", "maxItems", "pattern", "format"):
        if key in schema:
            node.constraints[key] = schema[key]
    if "items" in schema:
        node.items = schema["items"]
    if isinstance(schema.get("additionalProperties"), dict):
        node.values = schema["additionalProperties"]


@dataclass
class Comparison:
    contract: Json
    doc: Json
    source: str
    problems: list[str] = field(default_factory=list)
    not_compared: list[str] = field(default_factory=list)

    def run(self) -> Comparison:
        for name, spec in self.contract["types"].items():
            if spec["source"] == self.source:
                self._answer_fields(spec.get("fields") or {}, self._at(spec), f"types.{name}")
            else:
                self.not_compared.append(f"types.{name} (from {spec['source']})")
        for op_id, op in self.contract["operations"].items():
            if op["source"] == self.source:
                self._operation(op_id, op)
            else:
                self.not_compared.append(f"operations.{op_id} (from {op['source']})")
        return self

    def _at(self, part: Json) -> Any:
        try:
            return pointer(self.doc, part["at"])
        except (KeyError, IndexError, TypeError):
            return None

    def _operation(self, op_id: str, op: Json) -> None:
        where = f"operations.{op_id}"
        escaped = op["path"].replace("~", "~0").replace("/", "~1")
        expected_at = f"#/paths/{escaped}/{op['method'].lower()}"
        theirs = self._at(op)
        if op["at"] != expected_at or theirs is None:
            self.problems.append(f"{where}: {op['method']} {op['path']} is not in the document")
            return
        if theirs.get("operationId") not in (None, op_id):
            self.problems.append(f"{where}: the document calls it {theirs['operationId']!r}")
        documented = {p.get("name") for p in theirs.get("parameters", []) if "name" in p}
        documented |= {
            pointer(self.doc, p["$ref"]).get("name")
            for p in theirs.get("parameters", [])
            if "$ref" in p
        }
        for name in op.get("query") or {}:
            if name not in documented:
                self.problems.append(f"{where}.query.{name}: the document has no such parameter")
        if "request" in op:
            body = (theirs.get("requestBody") or {}).get("content", {}).get("application/json")
            if body is None:
                self.problems.append(f"{where}: the document takes no JSON body")
            else:
                self._request_fields(op["request"].get("fields") or {}, body["schema"], where)
        for status, answer in op["responses"].items():
            self._response(theirs, str(status), answer, f"{where}.responses.{status}")
        self._error_body(theirs, op["errors"], where)

    def _response(self, theirs: Json, status: str, answer: Json, where: str) -> None:
        documented = theirs.get("responses", {}).get(status)
        if documented is None:
            self.problems.append(f"{where}: status {status} is not documented")
            return
        if "$ref" in documented:
            documented = pointer(self.doc, documented["$ref"])
        content = (documented.get("content") or {}).get("application/json")
        if answer.get("empty"):
            if content is not None:
                self.problems.append(f"{where}: the document gives this answer a body")
            return
        if content is None:
            self.problems.append(f"{where}: the document gives this answer no JSON body")
        elif "type" in answer:
            fields = self.contract["types"][answer["type"]].get("fields") or {}
            self._answer_fields(fields, content["schema"], where)
        else:
            self._answer_fields(answer.get("fields") or {}, content["schema"], where)

    def _error_body(self, theirs: Json, error_type: str, where: str) -> None:
        default = theirs.get("responses", {}).get("default") or {}
        content = (default.get("content") or {}).get("application/problem+json")
        if content is None:
            self.problems.append(f"{where}: the document has no problem+json default answer")
            return
        fields = self.contract["types"][error_type].get("fields") or {}
        self._answer_fields(fields, content["schema"], f"{where}.errors")

    # -- what the project sends ----------------------------------------------------------

    def _matched(
        self, fields: Json, node: Node, where: str, verb: str
    ) -> Iterator[tuple[str, str, Json, Any]]:
        """(name, where, our field, their schema) for each field the document has; the others
        are listed as not compared (from another source) or as problems."""
        for name, ours in fields.items():
            at = f"{where}.{name}"
            if ours.get("source", self.source) != self.source:
                self.not_compared.append(f"{at} (from {ours['source']})")
            elif name not in node.props:
                self.problems.append(f"{at}: {verb}, but the document has no such field")
            else:
                yield name, at, ours, node.props[name]

    def _nested(self, ours: Json, schema: Any, theirs: Node, where: str, sent: bool) -> None:
        """Go on into an object's fields, an array's items or a map's values."""
        fields_of, field_of = (
            (self._request_fields, self._request_field)
            if sent
            else (self._answer_fields, self._answer_field)
        )
        kind = ours["type"]
        if kind == "object":
            fields_of(ours.get("fields") or {}, schema, where)
        elif kind in self.contract["types"]:
            fields_of(self.contract["types"][kind].get("fields") or {}, schema, where)
        elif kind == "array" and theirs.items is not None:
            field_of(ours["items"], theirs.items, f"{where}[]")
        elif kind == "map" and theirs.values is not None:
            field_of(ours["values"], theirs.values, f"{where}{{}}")

    def _request_fields(self, fields: Json, schema: Any, where: str) -> None:
        node = resolve(self.doc, schema)
        for _name, at, ours, theirs in self._matched(fields, node, where, "sent"):
            self._request_field(ours, theirs, at)
        for name in sorted(node.required):
            if not (fields.get(name) or {}).get("required"):
                self.problems.append(f"{where}.{name}: the document requires it; send it always")

    def _request_field(self, ours: Json, schema: Any, where: str) -> None:
        theirs = resolve(self.doc, schema)
        sent = _json_types(ours)
        if theirs.types and not all(_accepts(theirs.types, t) for t in sent):
            self.problems.append(f"{where}: sent as {sorted(sent)}, the document takes "
                                 f"{sorted(theirs.types)}")  # fmt: skip
        self.problems += [f"{where}: {p}" for p in _looser(ours, theirs.constraints)]
        self._nested(ours, schema, theirs, where, sent=True)

    # -- what the project reads ----------------------------------------------------------

    def _answer_fields(self, fields: Json, schema: Any, where: str) -> None:
        if schema is None:
            self.problems.append(f"{where}: not in the document")
            return
        node = resolve(self.doc, schema)
        for name, at, ours, theirs in self._matched(fields, node, where, "read"):
            if ours.get("required") and name not in node.required:
                self.problems.append(f"{at}: read as always there; the document may omit it")
            self._answer_field(ours, theirs, at)

    def _answer_field(self, ours: Json, schema: Any, where: str) -> None:
        theirs = resolve(self.doc, schema)
        accepted = _json_types(ours)
        if not all(_accepts(accepted, t) for t in theirs.types):
            self.problems.append(f"{where}: read as {sorted(accepted)}, the document may send "
                                 f"{sorted(theirs.types)}")  # fmt: skip
        self.problems += [f"{where}: {p}" for p in _stricter(ours, theirs.constraints)]
        self._nested(ours, schema, theirs, where, sent=False)


def _json_types(ours: Json) -> set[str]:
    kind = _OURS_TO_JSON.get(ours["type"], ours["type"])
    if kind not in {"string", "integer", "number", "boolean", "array", "object"}:
        kind = "object"  # a named type is an object
    return {kind, "null"} if ours.get("nullable") else {kind}


def _accepts(accepted: set[str], kind: str) -> bool:
    return kind in accepted or (kind == "integer" and "number" in accepted)


def _looser(ours: Json, theirs: Json) -> list[str]:
    """Where the contract would let through a value RunPod's document refuses."""
    problems = []
    if "enum" in theirs and not set(ours.get("enum", [object()])) <= set(theirs["enum"]):
        problems.append(f"values must be limited to {theirs['enum']}")
    for key, stricter in (
        ("minimum", max),
        ("minLength", max),
        ("maxLength", min),
        ("maxItems", min),
    ):
        if key in theirs and (key not in ours or stricter(ours[key], theirs[key]) != ours[key]):
            problems.append(f"{key} must be at least as strict as the document's {theirs[key]}")
    if "pattern" in theirs and ours.get("pattern") != theirs["pattern"]:
        problems.append(f"pattern must be the document's {theirs['pattern']!r}")
    return problems


def _stricter(ours: Json, theirs: Json) -> list[str]:
    """Where the contract would refuse an answer RunPod's document allows."""
    problems = []
    if "enum" in ours and not set(theirs.get("enum", [object()])) <= set(ours["enum"]):
        problems.append(f"the document allows values {theirs.get('enum', 'of any kind')}")
    for key in ("minimum", "minLength", "maxLength", "maxItems", "pattern"):
        if key in ours and ours[key] != theirs.get(key):
            problems.append(f"{key} {ours[key]!r} is not in the document")
    if "format" in ours and ours["format"] != theirs.get("format"):
        problems.append(f"format {ours['format']!r} is not the document's")
    return problems


def compare(contract: Json, doc: Json, source: str) -> Comparison:
    return Comparison(contract, doc, source).run()
