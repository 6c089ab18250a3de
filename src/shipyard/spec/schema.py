"""The spec's shape as data: a JSON Schema for editors, and the key path behind a pydantic error.

Both come from the models themselves so they can never drift from what validation
actually accepts."""

from __future__ import annotations

import types
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, Tag

from .models import Spec

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

Path = tuple[str | int, ...]


def json_schema() -> dict[str, Any]:
    """JSON Schema of shipyard.yaml (durations as strings with a pattern), for editor completion."""
    schema = Spec.model_json_schema(mode="validation")
    schema["title"] = "shipyard.yaml"
    schema["description"] = "A shipyard service spec: how to build, run, check and roll out one HTTP service."
    return {"$schema": SCHEMA_DIALECT, **schema}


def _strip(tp: Any) -> Any:
    """Drop Annotated wrappers and `| None`, which leave no trace in an error location."""
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp = get_args(tp)[0]
        elif origin in (Union, types.UnionType):
            members = [a for a in get_args(tp) if a is not type(None)]
            if len(members) != 1:
                return tp
            tp = members[0]
        else:
            return tp


def _tags(union: Any) -> dict[str, Any]:
    """Tag -> member of a tagged union (pydantic puts the tag into the error location)."""
    found: dict[str, Any] = {}
    for member in get_args(union):
        if get_origin(member) is Annotated:
            for meta in get_args(member)[1:]:
                if isinstance(meta, Tag):
                    found[meta.tag] = member
    return found


def resolve_loc(loc: tuple[str | int, ...], root: Any = Spec) -> tuple[Path, type[BaseModel] | None]:
    """The user-facing key path of a pydantic error location, and the model holding its last key.

    Union tags and pydantic's ``[key]`` marker are removed: they are not keys in the file."""
    tp: Any = root
    path: list[str | int] = []
    holder: type[BaseModel] | None = None
    for element in loc:
        tp = _strip(tp)
        if get_origin(tp) in (Union, types.UnionType):
            tagged = _tags(tp)
            if isinstance(element, str) and element in tagged:
                tp = tagged[element]
                continue
            tp = None
        if element == "[key]":
            continue
        path.append(element)
        holder = None
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            holder = tp
            field = tp.model_fields.get(str(element))
            tp = field.annotation if field is not None else None
        elif get_origin(tp) is list:
            tp = get_args(tp)[0]
        elif get_origin(tp) is dict:
            tp = get_args(tp)[1]
        else:
            tp = None
    return tuple(path), holder
