"""How config problems are worded: one line per problem, naming the key, its value and the fix.

Every key's correct example lives on its pydantic field (`Field(examples=[...])`), so a message
that pydantic words without a fix ("Input should be a valid list", "Field required") can show
one, and docs/configuration.md and the tests read the same examples.
"""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

PROJECT = "llm-endpoint"
SECRET_KEYS = ("apiKey", "hfToken", "runpodApiKey")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the stack config. `key` is the path inside the namespace
    (`gcp.zone`); `value` is what was set (None: not set), never shown if secret."""

    key: str
    value: Any
    message: str
    # A key outside the namespace (a misspelt `llm-endpont:gcp`) is named in full, valueless.
    foreign: bool = False
    # Not an error: something that could not be checked, shown by `pulumi preview` as a warning.
    warning: bool = False


def field_at(root: type[BaseModel], path: str) -> FieldInfo | None:
    """The pydantic field for a camelCase key path such as `gcp.allowedSourceRanges`."""
    model: type[BaseModel] | None = root
    found: FieldInfo | None = None
    for part in path.split("."):
        if model is None:
            return None
        found = next((f for name, f in model.model_fields.items() if _alias(name, f) == part), None)
        if found is None:
            return None
        model = _nested_model(found.annotation)
    return found


def _alias(name: str, info: FieldInfo) -> str:
    alias = info.validation_alias
    return alias if isinstance(alias, str) else name


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    candidates = (
        typing.get_args(annotation)
        if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union
        else (annotation,)
    )
    for c in candidates:
        if isinstance(c, type) and issubclass(c, BaseModel):
            return c
    return None


def example_of(root: type[BaseModel], path: str) -> str | None:
    """A correct setting for `path`, written the way it goes into the stack file."""
    leaf = path.rsplit(".", 1)[-1]
    if leaf in SECRET_KEYS and "." not in path:
        return f"`pulumi config set --secret {PROJECT}:{leaf}` (it prompts for the value)"
    info = field_at(root, path)
    if info is None or not info.examples:
        return None
    line = f"{leaf}: {json.dumps(info.examples[0])}"
    if "." not in path:
        return f"`{PROJECT}:{line}` in Pulumi.<stack>.yaml"
    parent = path.rsplit(".", 1)[0]
    return f"`{line}` under `{PROJECT}:{parent}` in Pulumi.<stack>.yaml"


# pydantic's own wording for these gives no fix; ours says what is expected, plus the example.
_PLAIN_WORDING = {
    "missing": "required but not set",
    "too_short": "must not be empty",
    "extra_forbidden": "unknown key (a typo?). Remove it or fix its name; "
    "docs/configuration.md lists every key",
}


def problem_from_pydantic(root: type[BaseModel], err: ErrorDetails) -> Problem:
    path = loc_path(err["loc"])
    value = None if err["type"] == "missing" else err.get("input")
    message = _PLAIN_WORDING.get(err["type"], err["msg"].removeprefix("Value error, "))
    if err["type"] != "value_error" and err["type"] != "extra_forbidden":
        example = example_of(root, path)
        if example:
            message = f"{message}. Example: {example}"
    return Problem(path, value, message)


def loc_path(loc: tuple[int | str, ...]) -> str:
    """The key path an error is about: list positions are dropped (the list is the key)."""
    parts: list[str] = []
    for p in loc:
        if isinstance(p, int):
            break
        parts.append(p)
    return ".".join(parts)


def display(key_path: str, value: Any, secret_keys: frozenset[str]) -> str:
    if value is None:
        return "(not set)"
    top = key_path.split(".", 1)[0]
    if key_path.rsplit(".", maxsplit=1)[-1] in SECRET_KEYS or top in secret_keys:
        return "<secret>"
    return repr(value) if isinstance(value, str) else str(value)


def _line(p: Problem, secret_keys: frozenset[str]) -> str:
    if p.foreign:
        return f"{p.key}: {p.message}"
    return f"{PROJECT}:{p.key} = {display(p.key, p.value, secret_keys)}: {p.message}"


def format_warning(p: Problem, secret_keys: frozenset[str]) -> str:
    return "Not checked: " + _line(p, secret_keys)


def format_problems(problems: Iterable[Problem], secret_keys: frozenset[str]) -> str:
    """The errors, one per line; then what could not be checked, if anything."""
    problems = list(problems)
    errors = [f"  - {_line(p, secret_keys)}" for p in problems if not p.warning]
    notes = [f"  - {_line(p, secret_keys)}" for p in problems if p.warning]
    count = len(errors)
    text = f"Invalid stack configuration ({count} problem{'s' if count > 1 else ''}):\n"
    text += "\n".join(errors)
    if notes:
        text += "\nAlso not checked:\n" + "\n".join(notes)
    return text
