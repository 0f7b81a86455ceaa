"""Model metadata from a Kubernetes ConfigMap mounted as a directory, and the registry's custom-property format.

A mounted ConfigMap is one file per key::

    /etc/model-metadata/RegisteredModel.name            -> ..data/RegisteredModel.name
    /etc/model-metadata/ModelVersion.custom_properties  -> ..data/ModelVersion.custom_properties
    /etc/model-metadata/..data                          -> ..2024_05_01_10_00_00.123456789
    /etc/model-metadata/..2024_05_01_10_00_00.123456789/

Names starting with ``..`` are the kubelet's atomic-update machinery and are skipped. Keys are
``<RegisteredModel|ModelVersion|ModelArtifact>.<field>``; the field may be snake_case (the upstream README)
or camelCase (what the Kubeflow UI backend writes: ``customProperties``, ``modelFormatName``, ...). The UI
also writes ``RegisteredModel.id``, ``ModelVersion.id`` and ``ModelArtifact.id``: they are accepted.
An unknown field under one of the three prefixes is a ``ConfigError`` (a mistyped key must not be silently
dropped); files without one of the prefixes are ignored. An empty value counts as unset.

``*.custom_properties`` hold a JSON object of plain values, mapped to the registry's ``MetadataValue``
wire form by :func:`to_custom_properties` (tests/standin/BEHAVIOURS.md §6).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, NoReturn

from job.errors import ConfigError

__all__ = [
    "CustomProperties",
    "ModelArtifactMeta",
    "ModelMetadata",
    "ModelVersionMeta",
    "RegisteredModelMeta",
    "comparable_custom_properties",
    "load_metadata",
    "to_custom_properties",
    "writable_custom_properties",
]

CustomProperties = dict[str, dict[str, Any]]
"""``{"key": {"metadataType": "MetadataStringValue", "string_value": "x"}, ...}`` (wire form)."""

VALUE_FIELDS = {
    "MetadataStringValue": "string_value",
    "MetadataIntValue": "int_value",
    "MetadataDoubleValue": "double_value",
    "MetadataBoolValue": "bool_value",
    "MetadataStructValue": "struct_value",
}
"""The value types the server maps; ``MetadataProtoValue`` is rejected by it (§6), so not accepted here."""

_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a JSON number")


def _metadata_value(key: str, value: Any, where: str) -> dict[str, Any]:
    if isinstance(value, dict) and "metadataType" in value:
        # Already in wire form (the UI backend writes it so): pass through, after a sanity check.
        kind = value["metadataType"]
        if kind not in VALUE_FIELDS or VALUE_FIELDS[kind] not in value:
            raise ConfigError(
                f"{where}: custom property {key!r} has metadataType {kind!r} without a usable value; "
                f"expected one of {', '.join(VALUE_FIELDS)} with its *_value field"
            )
        return dict(value)
    if value is None:
        raise ConfigError(f"{where}: custom property {key!r} is null; remove it or give it a value")
    if isinstance(value, bool):  # before int: bool is an int subclass
        return {"metadataType": "MetadataBoolValue", "bool_value": value}
    if isinstance(value, int):
        if not _INT32_MIN <= value <= _INT32_MAX:
            # The registry stores int_value as int32 and answers 400 otherwise (§6).
            raise ConfigError(
                f"{where}: custom property {key!r} = {value} does not fit the registry's int32; "
                "write it as a string or a float"
            )
        return {"metadataType": "MetadataIntValue", "int_value": str(value)}
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"{where}: custom property {key!r} is not a finite number")
        return {"metadataType": "MetadataDoubleValue", "double_value": value}
    if isinstance(value, str):
        return {"metadataType": "MetadataStringValue", "string_value": value}
    if isinstance(value, list | dict):
        # struct_value is base64 of the JSON text on input (§6). The server decodes it into a protobuf
        # Struct, i.e. a JSON *object* (a bare array gets 400), so a list is wrapped as {"items": [...]},
        # the shape Kubeflow's own Go code uses for lists in a struct value.
        text = json.dumps(
            value if isinstance(value, dict) else {"items": value},
            separators=(",", ":"),
            sort_keys=True,
            allow_nan=False,
        )
        return {"metadataType": "MetadataStructValue", "struct_value": base64.b64encode(text.encode()).decode()}
    raise ConfigError(f"{where}: custom property {key!r} has unsupported type {type(value).__name__}")


def to_custom_properties(values: Mapping[str, Any], *, where: str = "custom properties") -> CustomProperties:
    """Map plain JSON values to the registry's ``MetadataValue`` wire form (tests/standin/BEHAVIOURS.md §6).

    str -> MetadataStringValue, bool -> MetadataBoolValue, int -> MetadataIntValue (``int_value`` as a
    string, int32 only), float -> MetadataDoubleValue, dict -> MetadataStructValue (base64 of the JSON
    text), list -> the same, of ``{"items": [...]}`` (a struct is a JSON object). A value already in wire form (``{"metadataType": ...}``) is kept as is. ``None`` and anything
    else raise ``ConfigError`` whose message starts with ``where``.
    """
    return {str(key): _metadata_value(str(key), value, where) for key, value in values.items()}


def _struct_as_json(text: str) -> Any:
    """The JSON a struct_value holds: plain JSON text (what the server returns) or base64 of it (input)."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return json.loads(base64.b64decode(text, validate=True))
    except (ValueError, binascii.Error):
        return text


def writable_custom_properties(props: Mapping[str, Any] | None) -> CustomProperties:
    """Custom properties read from the server, in the form the server accepts back.

    The server returns ``struct_value`` as plain JSON text but expects base64 on input (§6): re-sending a
    GET's properties unchanged in a PATCH would corrupt or reject them. Everything else passes through.
    """
    out: CustomProperties = {}
    for key, value in (props or {}).items():
        if not isinstance(value, dict):
            continue
        value = dict(value)
        if value.get("metadataType") == "MetadataStructValue" and isinstance(value.get("struct_value"), str):
            decoded = _struct_as_json(value["struct_value"])
            if isinstance(decoded, dict | list):
                text = json.dumps(decoded, separators=(",", ":"), sort_keys=True)
                value["struct_value"] = base64.b64encode(text.encode()).decode()
        out[key] = value
    return out


def comparable_custom_properties(props: Mapping[str, Any] | None) -> dict[str, tuple[str, Any]]:
    """``{key: (metadataType, python value)}``, equal for a property as sent and as read back.

    Struct values are decoded (base64 on input, plain JSON on output, §6), ints parsed, doubles as float.
    """
    out: dict[str, tuple[str, Any]] = {}
    for key, value in (props or {}).items():
        if not isinstance(value, dict):
            continue
        kind = str(value.get("metadataType"))
        raw = value.get(VALUE_FIELDS.get(kind, ""))
        if kind == "MetadataStructValue" and isinstance(raw, str):
            raw = _struct_as_json(raw)
        elif kind in ("MetadataIntValue", "MetadataDoubleValue") and raw is not None:
            with contextlib.suppress(TypeError, ValueError):  # else compare as given
                raw = int(raw) if kind == "MetadataIntValue" else float(raw)
        out[key] = (kind, raw)
    return out


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()


@dataclass(frozen=True)
class _Part:
    """Shared behaviour of the three metadata parts."""

    def create_body(self) -> dict[str, Any]:
        """The camelCase REST create body for the fields that are set (``id`` never: create bodies reject it)."""
        body: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "id" or value is None or value == {}:
                continue
            body[_camel(f.name)] = dict(value) if isinstance(value, dict) else value
        return body


@dataclass(frozen=True)
class RegisteredModelMeta(_Part):
    """``RegisteredModel.*`` keys."""

    id: str | None = None
    name: str | None = None
    description: str | None = None
    owner: str | None = None
    external_id: str | None = None
    custom_properties: CustomProperties = field(default_factory=dict)


@dataclass(frozen=True)
class ModelVersionMeta(_Part):
    """``ModelVersion.*`` keys."""

    id: str | None = None
    name: str | None = None
    description: str | None = None
    author: str | None = None
    external_id: str | None = None
    custom_properties: CustomProperties = field(default_factory=dict)


@dataclass(frozen=True)
class ModelArtifactMeta(_Part):
    """``ModelArtifact.*`` keys (``uri`` and ``state`` are the job's to set, so not accepted)."""

    id: str | None = None
    name: str | None = None
    description: str | None = None
    external_id: str | None = None
    model_format_name: str | None = None
    model_format_version: str | None = None
    storage_key: str | None = None
    storage_path: str | None = None
    service_account_name: str | None = None
    model_source_kind: str | None = None
    model_source_class: str | None = None
    model_source_group: str | None = None
    model_source_id: str | None = None
    model_source_name: str | None = None
    custom_properties: CustomProperties = field(default_factory=dict)


@dataclass(frozen=True)
class ModelMetadata:
    """Everything the metadata ConfigMap said; parts with no keys are all-``None``."""

    registered_model: RegisteredModelMeta = field(default_factory=RegisteredModelMeta)
    model_version: ModelVersionMeta = field(default_factory=ModelVersionMeta)
    model_artifact: ModelArtifactMeta = field(default_factory=ModelArtifactMeta)


_PARTS: dict[str, type[_Part]] = {
    "RegisteredModel": RegisteredModelMeta,
    "ModelVersion": ModelVersionMeta,
    "ModelArtifact": ModelArtifactMeta,
}


def _read_value(entry: Path, key: str, where: Path) -> str:
    try:
        text = entry.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{key} in {where}: not UTF-8 text") from exc
    except OSError as exc:
        raise ConfigError(f"{key} in {where}: cannot read: {exc.strerror or exc}") from exc
    return text.rstrip("\r\n")  # YAML block scalars (`|`) end with a newline


def _parse_properties(text: str, key: str, where: Path) -> CustomProperties:
    try:
        value = json.loads(text, parse_constant=_reject_constant)
        if not isinstance(value, dict):
            raise ConfigError(f"{key} in {where}: expected a JSON object, got {type(value).__name__}")
        return to_custom_properties(value, where=f"{key} in {where}")
    except RecursionError:
        # json's C scanner and encoder stop at the interpreter's recursion limit (about 1000 levels).
        raise ConfigError(f"{key} in {where}: invalid JSON: nested too deep") from None
    except ValueError as exc:
        raise ConfigError(f"{key} in {where}: invalid JSON: {exc}") from exc


def load_metadata(path: Path) -> ModelMetadata:
    """Read a mounted metadata ConfigMap directory. Raises ``ConfigError`` for anything wrong in it."""
    if not path.is_dir():
        raise ConfigError(f"metadata ConfigMap {path}: not a directory (is the ConfigMap mounted there?)")
    found: dict[str, dict[str, Any]] = {prefix: {} for prefix in _PARTS}
    seen: dict[tuple[str, str], str] = {}
    for entry in sorted(path.iterdir()):
        key = entry.name
        if key.startswith(".."):  # kubelet's ..data symlink and timestamped dirs
            continue
        prefix, dot, raw_field = key.partition(".")
        if not dot or prefix not in _PARTS or entry.is_dir():
            continue
        name = _snake(raw_field)
        allowed = {f.name for f in fields(_PARTS[prefix])}
        if name not in allowed:
            raise ConfigError(
                f"unknown metadata key {key!r} in {path}; {prefix} accepts: "
                + ", ".join(f"{prefix}.{n}" for n in sorted(allowed))
            )
        if (prefix, name) in seen:
            raise ConfigError(f"metadata keys {seen[prefix, name]!r} and {key!r} in {path} both set {prefix}.{name}")
        seen[prefix, name] = key
        text = _read_value(entry, key, path)
        if not text:
            continue
        found[prefix][name] = _parse_properties(text, key, path) if name == "custom_properties" else text
    return ModelMetadata(
        registered_model=RegisteredModelMeta(**found["RegisteredModel"]),
        model_version=ModelVersionMeta(**found["ModelVersion"]),
        model_artifact=ModelArtifactMeta(**found["ModelArtifact"]),
    )
