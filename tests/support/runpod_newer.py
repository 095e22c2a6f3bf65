"""What RunPod's newer API documents add to the OpenAPI copy the emulator validates against
(docs/facts/runpod.md, sections "entrypoint and cmd" and "Account secrets"; read from RunPod's
api-reference-v2 pages, runpod/docs commits 4962c60 and 6bedc9a). Everything added here is
marked `x-source: newer-documents`, so a reader of the compiled contract can tell it from the
2026-08 document.

Added: `entrypoint` and `cmd` (arrays of strings, exec form) on pod create, update and the pod
itself; `/v2/account/secrets` (list with `?name=`, create) and `/v2/account/secrets/{id}` (get,
update, delete), with secret names as RunPod accepts them.
"""

from __future__ import annotations

import copy
from typing import Any

SOURCE = "newer-documents"
_ERROR = {"$ref": "#/components/responses/UnauthorizedError"}


def _exec_form(what: str) -> dict[str, Any]:
    return {
        "type": "array",
        "items": {"type": "string"},
        "description": f"The container {what} in exec form; [] clears it, omitted leaves it.",
        "x-source": SOURCE,
    }


def _problem() -> dict[str, Any]:
    return {
        "description": "Error",
        "content": {
            "application/problem+json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}
        },
    }


def _json(schema_ref: str, description: str = "OK") -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": schema_ref}}},
    }


_SECRET_NAME = {
    "type": "string",
    "minLength": 1,
    "maxLength": 191,
    "pattern": r"^[a-zA-Z_][a-zA-Z0-9_.\-/]*$",
    "x-source": SOURCE,
}

SCHEMAS: dict[str, Any] = {
    "Secret": {
        "type": "object",
        "required": ["id", "name", "createdAt"],
        "properties": {
            "id": {"type": "string"},
            "name": {"type": "string"},
            "createdAt": {"type": "string", "format": "date-time"},
            "description": {"type": ["string", "null"]},
            "valueLastUpdatedAt": {"type": ["string", "null"], "format": "date-time"},
        },
        "additionalProperties": False,
        "x-source": SOURCE,
    },
    "ListSecretsResponse": {
        "type": "object",
        "required": ["secrets"],
        "properties": {
            "secrets": {"type": "array", "items": {"$ref": "#/components/schemas/Secret"}}
        },
        "x-source": SOURCE,
        "description": "The list's wrapper key is inferred, like `pods` for listPods.",
    },
    "CreateSecretRequest": {
        "type": "object",
        "required": ["name", "value"],
        "properties": {
            "name": _SECRET_NAME,
            "value": {"type": "string", "minLength": 1, "maxLength": 16777216},
            "description": {"type": "string", "maxLength": 65535},
        },
        "additionalProperties": False,
        "x-source": SOURCE,
    },
    "UpdateSecretRequest": {
        "type": "object",
        "properties": {
            "value": {"type": "string", "minLength": 1, "maxLength": 16777216},
            "description": {"type": "string", "maxLength": 65535},
        },
        "additionalProperties": False,
        "x-source": SOURCE,
    },
}


def _responses(ok_code: str, ok: dict[str, Any]) -> dict[str, Any]:
    return {ok_code: ok, "401": _ERROR, "default": _problem()}


PATHS: dict[str, Any] = {
    "/v2/account/secrets": {
        "x-source": SOURCE,
        "get": {
            "operationId": "listSecrets",
            "parameters": [
                {"name": "name", "in": "query", "required": False, "schema": {"type": "string"}}
            ],
            "responses": _responses("200", _json("#/components/schemas/ListSecretsResponse")),
        },
        "post": {
            "operationId": "createSecret",
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {"$ref": "#/components/schemas/CreateSecretRequest"}
                    }
                },
            },
            "responses": _responses("201", _json("#/components/schemas/Secret", "Created")),
        },
    },
    "/v2/account/secrets/{id}": {
        "x-source": SOURCE,
        "parameters": [
            {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
        ],
        "get": {
            "operationId": "getSecret",
            "responses": _responses("200", _json("#/components/schemas/Secret")),
        },
        "patch": {
            "operationId": "updateSecret",
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {"$ref": "#/components/schemas/UpdateSecretRequest"}
                    }
                },
            },
            "responses": _responses("200", _json("#/components/schemas/Secret")),
        },
        "delete": {
            "operationId": "deleteSecret",
            "responses": _responses("204", {"description": "Deleted. Response has no body."}),
        },
    },
}


def _own_properties(schema: dict[str, Any]) -> dict[str, Any]:
    """The `properties` of the object part of an allOf schema (where the API adds fields)."""
    part = next(p for p in schema["allOf"] if "properties" in p)
    props: dict[str, Any] = part["properties"]
    return props


def apply(document: dict[str, Any]) -> dict[str, Any]:
    """A copy of the OpenAPI `document` with the newer documents' additions."""
    doc = copy.deepcopy(document)
    schemas = doc["components"]["schemas"]
    for name in ("CreatePodRequest", "UpdatePodRequest", "Pod"):
        props = _own_properties(schemas[name])
        props["entrypoint"] = _exec_form("ENTRYPOINT")
        props["cmd"] = _exec_form("CMD (the entrypoint's arguments)")
    schemas.update(copy.deepcopy(SCHEMAS))
    doc["paths"].update(copy.deepcopy(PATHS))
    return doc
