"""A small writer of protobuf text format, the language of Triton's ``config.pbtxt``.

Why not ``text_format.MessageToString(model_config_pb2.ModelConfig(...))``: that needs tritonclient (the
``serve`` extra) just to write a file, and it cannot carry comments, which is where a repository says what
Triton's schema has no field for (an engine profile's H/W range). Every config written here is parsed back
with Triton's own ``model_config_pb2`` where tritonclient is installed (``check_model_config``), and the
tests do so for every kind of config the repository writes.

Values: ``str`` quoted, ``bool`` true/false, ``int``/``float`` as numbers, :class:`Enum` bare, ``dict`` a
nested message, ``list`` a repeated field (scalars as ``[a, b]``, messages one block each), and
:class:`Comment` a ``# ...`` line. Map fields are repeated ``{"key": ..., "value": ...}`` messages, as text
format spells them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from deploy_unet.errors import ArtifactError


@dataclass(frozen=True)
class Enum:
    """An enum literal, written bare: ``kind: KIND_GPU``."""

    name: str


@dataclass(frozen=True)
class Comment:
    """A ``# text`` line at this point of the message (a key of its own, any name starting with ``#``)."""

    text: str


def _scalar(value: Any) -> str:
    if isinstance(value, Enum):
        return value.name
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid text-format string literal
    raise TypeError(f"cannot write {value!r} ({type(value).__name__}) as a protobuf text scalar")


def to_pbtxt(message: dict[str, Any], indent: int = 0) -> str:
    """The text-format body of ``message`` (fields in insertion order)."""
    pad = "  " * indent
    lines: list[str] = []
    for key, value in message.items():
        if isinstance(value, Comment):
            lines.extend(f"{pad}# {line}".rstrip() for line in value.text.splitlines())
        elif isinstance(value, dict):
            lines.append(f"{pad}{key} {{")
            lines.append(to_pbtxt(value, indent + 1))
            lines.append(f"{pad}}}")
        elif isinstance(value, list | tuple):
            if value and all(isinstance(v, dict) for v in value):
                for item in value:
                    lines.append(f"{pad}{key} {{")
                    lines.append(to_pbtxt(item, indent + 1))
                    lines.append(f"{pad}}}")
            elif any(isinstance(v, dict) for v in value):
                raise TypeError(f"field {key!r} mixes messages and scalars")
            else:
                lines.append(f"{pad}{key}: [ {', '.join(_scalar(v) for v in value)} ]")
        elif value is not None:
            lines.append(f"{pad}{key}: {_scalar(value)}")
    return "\n".join(line for line in lines if line != "")


def map_entries(mapping: dict[str, Any]) -> list[dict[str, Any]]:
    """A protobuf map as text format writes it: one ``{key, value}`` message per entry."""
    return [{"key": k, "value": v} for k, v in mapping.items()]


def check_model_config(text: str, source: str = "config.pbtxt"):
    """Parse ``text`` with Triton's own schema (tritonclient's ``model_config_pb2``); return the message.

    Unknown fields, wrong types and malformed text raise ArtifactError. Returns None when tritonclient is
    not installed (the ``serve`` extra), so writing a repository never needs it.
    """
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        return None
    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise ArtifactError(f"{source} does not parse as a Triton ModelConfig: {exc}") from None
