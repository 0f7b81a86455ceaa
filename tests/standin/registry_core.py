"""Core of the Model Registry stand-in: body decoding, the in-memory store and the REST operations.

No I/O here: :mod:`tests.standin.model_registry` puts HTTP in front of it. Every quirk cites the section
("§N") of tests/standin/BEHAVIOURS.md that it reproduces; that file is the source of truth wherever the
real server and the OpenAPI spec disagree.
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

JSON = Any
Reply = tuple[int, JSON]

RM, MV = "registered-model", "model-version"
MODEL_ARTIFACT = "model-artifact"
ARTIFACT_TYPES = (MODEL_ARTIFACT, "doc-artifact", "dataset-artifact", "metric", "parameter")
# Go type names (for error texts) and the words used in 409 messages (artifact.go).
_ARTIFACT_GO_NAMES = dict(
    zip(ARTIFACT_TYPES, ("ModelArtifact", "DocArtifact", "DataSet", "Metric", "Parameter"), strict=True)
)
_ARTIFACT_WORDS = dict(zip(ARTIFACT_TYPES, ("model", "doc", "dataset", "metric", "parameter"), strict=True))
_HIDDEN_PROPS = ("experiment_id", "experiment_run_id")  # §6: never shown in responses
_INT_RE = re.compile(r"[+-]?[0-9]+\Z")
_INT32 = (-(2**31), 2**31 - 1)


class ApiError(Exception):
    """An error answered as ``{"code": <status text>, "message": <message>}`` (§5)."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code or HTTPStatus(status).phrase


def bad_request(message: str) -> ApiError:
    """A 400 ``Bad Request`` error."""
    return ApiError(400, message)


def not_found(message: str) -> ApiError:
    """A 404 ``Not Found`` error; core errors end in ``: not found`` like Go's wrapped ErrNotFound."""
    return ApiError(404, f"{message}: not found")


def parse_int32(text: str) -> int:
    """Parse like Go's ``strconv.ParseInt(text, 10, 32)``; raise ValueError with Go's message."""
    if not _INT_RE.match(text):
        raise ValueError(f"strconv.ParseInt: parsing {json.dumps(text)}: invalid syntax")
    value = int(text)
    if not _INT32[0] <= value <= _INT32[1]:
        raise ValueError(f"strconv.ParseInt: parsing {json.dumps(text)}: value out of range")
    return value


def validate_id(text: str, entity: str) -> int:
    """``apiutils.ValidateIDAsInt32``: ids are decimal int32 strings, else 400 (§3)."""
    try:
        return parse_int32(text)
    except ValueError as exc:
        raise bad_request(f"invalid {entity} ID: {exc}: bad request") from None


def _normalize_numbers(value: JSON) -> JSON:
    """Render integral floats the way Go's float64 encoder does (``1`` rather than ``1.0``)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return int(value)
    if isinstance(value, dict):
        return {k: _normalize_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalize_numbers(v) for v in value]
    return value


def go_json(value: JSON) -> str:
    """Serialise like Go's ``encoding/json``: compact, sorted map keys, HTML-safe escapes."""
    text = json.dumps(_normalize_numbers(value), separators=(",", ":"), ensure_ascii=False, sort_keys=True)
    for char, escape in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(char, escape)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates from "\ud800" escapes: Go decodes them to U+FFFD
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def _reject_constant(name: str) -> JSON:
    raise ValueError(f"invalid character '{name[0]}' looking for beginning of value")


def parse_body(raw: bytes) -> JSON:
    """Decode a request body like ``json.NewDecoder(r.Body).Decode`` (§2): empty → 400 ``EOF``."""
    text = raw.decode("utf-8", "replace").lstrip(" \t\r\n")
    if not text:
        raise bad_request("EOF")
    try:
        # raw_decode: like Go's Decoder, trailing data after the first value is ignored.
        value, _ = json.JSONDecoder(parse_constant=_reject_constant).raw_decode(text)
    except ValueError as exc:
        raise bad_request(str(exc)) from None
    return value


# ---------------------------------------------------------------------------------------------------------
# Field sets of the spec's request schemas, used for the strict decode of §2.


@dataclass(frozen=True)
class Kind:
    """The JSON type of a body field, as the Go struct field that receives it."""

    go_type: str
    enum_name: str = ""
    enum: tuple[str, ...] = ()


STR, STRLIST, NUMBER, INT = Kind("string"), Kind("[]string"), Kind("float64"), Kind("int64")
PROPS = Kind("map[string]openapi.MetadataValue")
RM_STATE = Kind("string", "RegisteredModelState", ("LIVE", "ARCHIVED"))
MV_STATE = Kind("string", "ModelVersionState", ("LIVE", "ARCHIVED"))
ART_STATE = Kind(
    "string",
    "ArtifactState",
    ("UNKNOWN", "PENDING", "LIVE", "MARKED_FOR_DELETION", "DELETED", "ABANDONED", "REFERENCE"),
)
PARAM_TYPE = Kind("string", "ParameterType", ("string", "number", "boolean", "object"))
ARTIFACT_TYPE_PARAM = Kind("string", "ArtifactTypeQueryParam", ARTIFACT_TYPES)
ORDER_BY = Kind("string", "OrderByField", ("CREATE_TIME", "LAST_UPDATE_TIME", "ID"))
SORT_ORDER = Kind("string", "SortOrder", ("ASC", "DESC"))

Fields = Mapping[str, Kind]
_BASE: Fields = {"customProperties": PROPS, "description": STR, "externalId": STR}
_READ_ONLY: Fields = {"id": STR, "createTimeSinceEpoch": STR, "lastUpdateTimeSinceEpoch": STR}
_BASE_MODEL: Fields = {
    **{k: STR for k in ("readme", "maturity", "provider", "logo", "license", "licenseLink", "libraryName")},
    "language": STRLIST,
    "tasks": STRLIST,
}
RM_UPDATE: Fields = {**_BASE, **_BASE_MODEL, "owner": STR, "state": RM_STATE}
RM_CREATE: Fields = {**RM_UPDATE, "name": STR}
MV_UPDATE: Fields = {**_BASE, "state": MV_STATE, "author": STR}
MV_CREATE: Fields = {**MV_UPDATE, "name": STR, "registeredModelId": STR}
MV_FULL: Fields = {**MV_CREATE, **_READ_ONLY}  # body of POST /registered_models/{id}/versions
_MA_ONLY = (
    "modelFormatName",
    "modelFormatVersion",
    "storageKey",
    "storagePath",
    "serviceAccountName",
    "modelSourceKind",
    "modelSourceClass",
    "modelSourceGroup",
    "modelSourceId",
    "modelSourceName",
)
ARTIFACT_UPDATE: dict[str, Fields] = {
    MODEL_ARTIFACT: {**_BASE, "artifactType": STR, **dict.fromkeys(_MA_ONLY, STR), "uri": STR, "state": ART_STATE},
    "doc-artifact": {**_BASE, "artifactType": STR, "uri": STR, "state": ART_STATE},
    "dataset-artifact": {
        **_BASE,
        "artifactType": STR,
        "digest": STR,
        "sourceType": STR,
        "source": STR,
        "schema": STR,
        "profile": STR,
        "uri": STR,
        "state": ART_STATE,
    },
    "metric": {**_BASE, "artifactType": STR, "value": NUMBER, "timestamp": STR, "step": INT, "state": ART_STATE},
    "parameter": {**_BASE, "artifactType": STR, "value": STR, "parameterType": PARAM_TYPE, "state": ART_STATE},
}
ARTIFACT_CREATE = {t: {**f, "name": STR} for t, f in ARTIFACT_UPDATE.items()}
ARTIFACT_FULL = {
    t: {**f, **_READ_ONLY, "experimentId": STR, "experimentRunId": STR} for t, f in ARTIFACT_CREATE.items()
}
# Fields kept in the store (name, ids, timestamps, artifactType and customProperties are held apart).
_STORED = {RM: tuple(RM_UPDATE), MV: tuple(MV_UPDATE), **{t: tuple(f) for t, f in ARTIFACT_UPDATE.items()}}
_NOT_STORED = ("customProperties", "artifactType")

# MetadataValue branches (§6): metadataType → (value field, Go type, JSON type check).
_METADATA: dict[str, tuple[str, str, Callable[[JSON], bool]]] = {
    "MetadataIntValue": ("int_value", "string", lambda v: isinstance(v, str)),
    "MetadataDoubleValue": (
        "double_value",
        "float64",
        lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    ),
    "MetadataStringValue": ("string_value", "string", lambda v: isinstance(v, str)),
    "MetadataBoolValue": ("bool_value", "bool", lambda v: isinstance(v, bool)),
    "MetadataStructValue": ("struct_value", "string", lambda v: isinstance(v, str)),
    "MetadataProtoValue": ("proto_value", "string", lambda v: isinstance(v, str)),
}


def _json_kind(value: JSON) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    names: dict[type, str] = {str: "string", list: "array", dict: "object"}
    return names.get(type(value), "null")


def check_enum(value: str, kind: Kind) -> str:
    """Enum values are checked while decoding (§2): anything else is 400."""
    if value not in kind.enum:
        raise bad_request(f"invalid value '{value}' for {kind.enum_name}: valid values are [{' '.join(kind.enum)}]")
    return value


def _check_value(value: JSON, kind: Kind, where: str) -> JSON:
    def wrong(got: JSON, go_type: str = kind.go_type) -> ApiError:
        return bad_request(f"json: cannot unmarshal {_json_kind(got)} into Go struct field {where} of type {go_type}")

    if value is None:  # JSON null on a pointer field: nil, i.e. "not given"
        return None
    if kind is PROPS:
        if not isinstance(value, dict):
            raise wrong(value)
        return {key: _decode_metadata_value(v) for key, v in value.items()}
    if kind is STRLIST:
        if not isinstance(value, list):
            raise wrong(value)
        for item in value:
            if not isinstance(item, str):
                raise wrong(item, "string")
        return list(value)
    if kind is NUMBER:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise wrong(value)
        return value
    if kind is INT:
        if isinstance(value, bool) or not isinstance(value, int) or not -(2**63) <= value < 2**63:
            raise wrong(value)
        return value
    if not isinstance(value, str):
        raise wrong(value)
    return check_enum(value, kind) if kind.enum else value


def decode(
    body: JSON, fields: Fields, type_name: str, *, strict: bool = True, defaults: Mapping[str, JSON] | None = None
) -> dict[str, JSON]:
    """Decode a body into the field set of a spec schema (§2).

    ``strict`` mirrors ``DisallowUnknownFields`` (unknown field → 400); otherwise unknown fields are dropped.
    Keys match case-insensitively, like Go's encoding/json. ``defaults`` are the values preset by
    ``New<Type>WithDefaults()``; an explicit JSON null turns a field back to nil (None).
    """
    if not isinstance(body, dict):
        raise bad_request(f"json: cannot unmarshal {_json_kind(body)} into Go value of type openapi.{type_name}")
    by_lower = {name.lower(): name for name in fields}
    out: dict[str, JSON] = dict(defaults or {})
    for key, value in body.items():
        name = key if key in fields else by_lower.get(key.lower())
        if name is None:
            if strict:
                raise bad_request(f'json: unknown field "{key}"')
            continue
        out[name] = _check_value(value, fields[name], f"{type_name}.{name}")
    return out


def require(data: Mapping[str, JSON], *names: str) -> None:
    """A missing or empty required field is a RequiredError: HTTP 422 with code "Bad Request" (§2)."""
    for name in names:
        if not data.get(name):
            raise ApiError(422, f"required field '{name}' is zero value.", code="Bad Request")


def _decode_metadata_value(value: JSON) -> dict[str, JSON]:
    """Phase 1 of §6, ``MetadataValue.UnmarshalJSON``: an object; a known branch has a well-typed value."""
    if not isinstance(value, dict):
        raise bad_request("failed to unmarshal JSON into map for the discriminator lookup")
    branch = _METADATA.get(value.get("metadataType"))  # type: ignore[arg-type]
    if branch is not None:
        name, go_type, ok = branch
        prefix = f"failed to unmarshal MetadataValue as {value['metadataType']}"
        if value.get(name) is None:
            raise bad_request(f"{prefix}: no value given for required property {name}")
        if not ok(value[name]):
            raise bad_request(
                f"{prefix}: json: cannot unmarshal {_json_kind(value[name])} into Go struct field "
                f"{value['metadataType']}.{name} of type {go_type}"
            )
    return value


def convert_props(raw: Mapping[str, Mapping[str, JSON]] | None) -> dict[str, dict[str, JSON]] | None:
    """Phase 2 of §6, the openapi→DB converter; returns the values in their response form.

    int_value must parse as int32; struct_value is base64 of a JSON object on input and is kept as plain
    JSON text (the response form); MetadataProtoValue and unknown or missing metadataType give
    ``bad request: metadataType not found for <key>``.
    """
    if raw is None:
        return None
    out: dict[str, dict[str, JSON]] = {}
    for key, value in raw.items():
        mtype = value.get("metadataType")
        if mtype == "MetadataIntValue":
            try:
                out[key] = {"metadataType": mtype, "int_value": str(parse_int32(value["int_value"]))}
            except ValueError as exc:
                raise bad_request(f"bad request: {exc} for key {key}") from None
        elif mtype in ("MetadataDoubleValue", "MetadataStringValue", "MetadataBoolValue"):
            name = _METADATA[mtype][0]
            out[key] = {"metadataType": mtype, name: value[name]}
        elif mtype == "MetadataStructValue":
            try:
                decoded = json.loads(base64.b64decode(value["struct_value"], validate=True))
            except (binascii.Error, ValueError) as exc:
                raise bad_request(f"bad request: unable to decode {exc} for key {key}") from None
            if not isinstance(decoded, dict):
                raise bad_request(
                    f"bad request: unable to decode json: cannot unmarshal {_json_kind(decoded)} "
                    f"into Go value of type map[string]interface {{}} for key {key}"
                )
            out[key] = {"metadataType": mtype, "struct_value": go_json(decoded)}  # §6: plain JSON on output
        else:
            raise bad_request(f"bad request: metadataType not found for {key}")
    return out


# ---------------------------------------------------------------------------------------------------------
# The store.


@dataclass
class Entity:
    """A stored registered model, model version or artifact."""

    id: int
    kind: str  # RM, MV or an artifactType
    name: str  # as stored: owned entities carry an "<owner>:" prefix (§3)
    fields: dict[str, JSON]
    props: dict[str, dict[str, JSON]]
    created: int
    updated: int
    parent: int | None = None  # model version → its registered model
    attributions: list[int] = field(default_factory=list)  # artifact → the model versions it belongs to

    @property
    def display_name(self) -> str:
        """The name as answered: everything up to the first colon stripped for owned entities (§3)."""
        return self.name if self.kind == RM else self.name.split(":", 1)[-1]

    def render(self) -> dict[str, JSON]:
        """The entity as the server answers it (§3, §6, §8)."""
        out: dict[str, JSON] = {k: v for k, v in self.fields.items() if v is not None}
        out.update(
            id=str(self.id),
            name=self.display_name,
            createTimeSinceEpoch=str(self.created),
            lastUpdateTimeSinceEpoch=str(self.updated),
            customProperties={k: dict(v) for k, v in self.props.items() if k not in _HIDDEN_PROPS},
        )
        if self.kind == MV:
            out["registeredModelId"] = str(self.parent)
        elif self.kind != RM:
            out["artifactType"] = self.kind
        return out


@dataclass
class OpRequest:
    """What an operation gets from the HTTP layer: the path id, the first value of each query parameter, the body."""

    path_id: str = ""
    query: Mapping[str, str] = field(default_factory=dict)
    body: JSON = None


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class RegistryStore:
    """The in-memory registry and its REST operations (one method per operationId of §1).

    Registered models and versions share the Context id space, artifacts have their own (§3). All access
    goes through :attr:`lock`.
    """

    def __init__(self, clock: Callable[[], int] = _now_ms) -> None:
        """Create an empty store; ``clock`` returns epoch milliseconds."""
        self.lock = threading.RLock()
        self.clock = clock
        self.contexts: dict[int, Entity] = {}
        self.artifacts: dict[int, Entity] = {}
        self._next_ids = {"context": 1, "artifact": 1}

    def reset(self) -> None:
        """Forget every entity and restart ids at 1."""
        with self.lock:
            self.contexts.clear()
            self.artifacts.clear()
            self._next_ids = {"context": 1, "artifact": 1}

    def snapshot(self, kind: str | None = None) -> list[dict[str, JSON]]:
        """All entities (optionally of one kind: ``"registered-model"``, ``"model-version"`` or an artifactType)
        in their response form, by id. Lets tests inspect the state without HTTP."""
        with self.lock:
            everything = [
                *sorted(self.contexts.values(), key=lambda e: e.id),
                *sorted(self.artifacts.values(), key=lambda e: e.id),
            ]
            return [copy.deepcopy(e.render()) for e in everything if kind is None or e.kind == kind]

    # -- helpers --------------------------------------------------------------------------------------------

    def _table(self, kind: str) -> dict[int, Entity]:
        return self.contexts if kind in (RM, MV) else self.artifacts

    def _check_unique(self, kind: str, name: str, external_id: str | None, label: str, skip: int | None) -> None:
        """UNIQUE(type_id, name) and UNIQUE(external_id) per table → 409 "… already exists: conflict" (§4)."""
        for other in self._table(kind).values():
            if other.id != skip and (
                (other.kind == kind and other.name == name)
                or (external_id is not None and other.fields.get("externalId") == external_id)
            ):
                raise ApiError(409, f"{label} already exists: conflict")

    def _save(
        self,
        kind: str,
        name: str,
        data: Mapping[str, JSON],
        *,
        existing: Entity | None = None,
        label: str,
        parent: int | None = None,
    ) -> Entity:
        """Create an entity, or merge ``data`` into ``existing`` (§7): non-null fields overwrite, a present
        customProperties replaces the whole set, timestamps are server-side (§3)."""
        props = convert_props(data.get("customProperties"))
        external_id = data.get("externalId")
        if existing is not None and external_id is None:
            external_id = existing.fields.get("externalId")
        self._check_unique(
            kind, existing.name if existing else name, external_id, label, existing.id if existing else None
        )
        values = {k: v for k, v in data.items() if k in _STORED[kind] and k not in _NOT_STORED}
        now = self.clock()
        if existing is not None:
            existing.fields.update({k: v for k, v in values.items() if v is not None})
            if props is not None:
                existing.props = props
            existing.updated = max(now, existing.updated)
            return existing
        space = "context" if kind in (RM, MV) else "artifact"
        new_id = self._next_ids[space]
        self._next_ids[space] += 1
        entity = Entity(new_id, kind, name, values, props or {}, now, now, parent=parent)
        self._table(kind)[new_id] = entity
        return entity

    def _get(self, kind: str, path_id: str, entity: str) -> Entity:
        found = self._table(kind).get(validate_id(path_id, entity))
        if found is None or (kind in (RM, MV) and found.kind != kind):
            raise not_found(f"no {entity} found for id {path_id}")
        return found

    def _get_artifact(self, path_id: str, model_only: bool) -> Entity:
        art = self._get(MODEL_ARTIFACT, path_id, "artifact")  # §5 "no artifact found for id 7"
        if model_only and art.kind != MODEL_ARTIFACT:
            raise not_found(f"artifact with id {path_id} is not a model artifact")
        return art

    @staticmethod
    def _one(matches: list[Entity], what: str) -> Entity:
        """Find endpoints: no match and several matches are both 404 (§5)."""
        if not matches:
            raise not_found(f"no {what}")
        if len(matches) > 1:
            raise not_found(f"multiple {what}")
        return matches[0]

    def _page(self, items: Iterable[Entity], query: Mapping[str, str]) -> Reply:
        """List endpoints: pageSize/orderBy/sortOrder/nextPageToken like the real paginator (§5)."""
        if query.get("filterQuery"):
            raise bad_request("filterQuery is not supported by the Model Registry stand-in")
        try:
            page_size = parse_int32(query["pageSize"]) if query.get("pageSize") else 0
        except ValueError as exc:
            raise bad_request(f"{exc}: bad request") from None
        order_by = check_enum(query["orderBy"], ORDER_BY) if "orderBy" in query else "ID"
        descending = "sortOrder" in query and check_enum(query["sortOrder"], SORT_ORDER) == "DESC"

        def key(e: Entity) -> int:
            return {"ID": e.id, "CREATE_TIME": e.created, "LAST_UPDATE_TIME": e.updated}[order_by]

        ordered = sorted(items, key=lambda e: (key(e), e.id), reverse=descending)
        if token := query.get("nextPageToken"):
            try:  # base64 of "<id>:<order-by value>" (scopes/paginate.go)
                cursor_id, cursor_value = base64.b64decode(token, validate=True).decode().split(":", 1)
                cursor = (int(cursor_value), parse_int32(cursor_id))
            except (ValueError, UnicodeDecodeError) as exc:
                raise bad_request(f"invalid nextPageToken: {exc}: bad request") from None
            ordered = [e for e in ordered if ((key(e), e.id) < cursor if descending else (key(e), e.id) > cursor)]
        next_token = ""
        if 0 < page_size < len(ordered):
            ordered = ordered[:page_size]
            last = ordered[-1]
            next_token = base64.b64encode(f"{last.id}:{key(last)}".encode()).decode()
        return 200, {
            "items": [e.render() for e in ordered],
            "nextPageToken": next_token,
            "pageSize": page_size,
            "size": len(ordered),
        }

    # -- registered models ------------------------------------------------------------------------------------

    def create_registered_model(self, req: OpRequest) -> Reply:
        """POST /registered_models: strict decode, state defaults to LIVE (§9), name required (422)."""
        data = decode(req.body, RM_CREATE, "RegisteredModelCreate", defaults={"state": "LIVE"})
        require(data, "name")
        with self.lock:
            entity = self._save(RM, data["name"], data, label=f"registered model with name {data['name']}")
            return 201, entity.render()

    def get_registered_model(self, req: OpRequest) -> Reply:
        """GET /registered_models/{id}."""
        with self.lock:
            return 200, self._get(RM, req.path_id, "registered model").render()

    def update_registered_model(self, req: OpRequest) -> Reply:
        """PATCH /registered_models/{id}: an omitted state resets to LIVE (§7 trap)."""
        data = decode(req.body, RM_UPDATE, "RegisteredModelUpdate", defaults={"state": "LIVE"})
        with self.lock:
            found = self._get(RM, req.path_id, "registered model")
            label = f"registered model with name {found.name}"
            return 200, self._save(RM, found.name, data, existing=found, label=label).render()

    def find_registered_model(self, req: OpRequest) -> Reply:
        """GET /registered_model?name=|externalId= (§5)."""
        name, ext = req.query.get("name"), req.query.get("externalId")
        if name is None and ext is None:
            raise bad_request("invalid parameters call, supply either name or externalId: bad request")
        with self.lock:
            matches = [
                e
                for e in self.contexts.values()
                if e.kind == RM and name in (None, e.name) and ext in (None, e.fields.get("externalId"))
            ]
            found = self._one(matches, f"registered models found for name={name or ''}, externalId={ext or ''}")
            return 200, found.render()

    def list_registered_models(self, req: OpRequest) -> Reply:
        """GET /registered_models."""
        with self.lock:
            return self._page([e for e in self.contexts.values() if e.kind == RM], req.query)

    # -- model versions ---------------------------------------------------------------------------------------

    def create_model_version(self, req: OpRequest) -> Reply:
        """POST /model_versions: name and registeredModelId required (422); the parent is not checked (§4)."""
        data = decode(req.body, MV_CREATE, "ModelVersionCreate", defaults={"state": "LIVE"})
        require(data, "name", "registeredModelId")
        return self._create_version(data, data["registeredModelId"])

    def create_registered_model_version(self, req: OpRequest) -> Reply:
        """POST /registered_models/{id}/versions: body schema ModelVersion; the path id overrides (§2).

        Like ``UpsertModelVersion``, a body with an ``id`` updates that version instead.
        """
        data = decode(req.body, MV_FULL, "ModelVersion", defaults={"state": "LIVE"})
        require(data, "name", "registeredModelId")
        if data.get("id") is not None:
            with self.lock:
                found = self._get(MV, data["id"], "model version")
                label = f"model version with name {found.display_name}"
                return 201, self._save(MV, found.name, data, existing=found, label=label).render()
        return self._create_version(data, req.path_id)

    def _create_version(self, data: dict[str, JSON], parent_text: str) -> Reply:
        parent = validate_id(parent_text, "registered model")
        with self.lock:  # stored as "<registeredModelId>:<name>", unique per registered model (§3, §4)
            entity = self._save(
                MV,
                f"{parent_text}:{data['name']}",
                data,
                parent=parent,
                label=f"model version with name {data['name']}",
            )
            return 201, entity.render()

    def get_model_version(self, req: OpRequest) -> Reply:
        """GET /model_versions/{id}."""
        with self.lock:
            return 200, self._get(MV, req.path_id, "model version").render()

    def update_model_version(self, req: OpRequest) -> Reply:
        """PATCH /model_versions/{id}: an omitted state resets to LIVE (§7 trap)."""
        data = decode(req.body, MV_UPDATE, "ModelVersionUpdate", defaults={"state": "LIVE"})
        with self.lock:
            found = self._get(MV, req.path_id, "model version")
            label = f"model version with name {found.display_name}"
            return 200, self._save(MV, found.name, data, existing=found, label=label).render()

    def find_model_version(self, req: OpRequest) -> Reply:
        """GET /model_version?name=&parentResourceId= or ?externalId= (§5)."""
        name, parent, ext = (req.query.get(k) for k in ("name", "parentResourceId", "externalId"))
        if (name is None or parent is None) and ext is None:
            raise bad_request(
                "invalid parameters call, supply either (versionName and registeredModelId), "
                "or externalId: bad request"
            )
        parent_id = validate_id(parent, "registered model") if parent is not None else None
        with self.lock:
            matches = [
                e
                for e in self.contexts.values()
                if e.kind == MV
                and name in (None, e.display_name)
                and parent_id in (None, e.parent)
                and ext in (None, e.fields.get("externalId"))
            ]
            what = (
                f"model versions found for versionName={name or ''}, registeredModelId={parent or ''}, "
                f"externalId={ext or ''}"
            )
            return 200, self._one(matches, what).render()

    def list_model_versions(self, req: OpRequest) -> Reply:
        """GET /model_versions."""
        with self.lock:
            return self._page([e for e in self.contexts.values() if e.kind == MV], req.query)

    def list_registered_model_versions(self, req: OpRequest) -> Reply:
        """GET /registered_models/{id}/versions: the parent is not checked, unknown → empty list (§5)."""
        parent = validate_id(req.path_id, "registered model")
        name, ext = req.query.get("name"), req.query.get("externalId")
        with self.lock:
            return self._page(
                [
                    e
                    for e in self.contexts.values()
                    if e.kind == MV
                    and e.parent == parent
                    and name in (None, e.display_name)
                    and ext in (None, e.fields.get("externalId"))
                ],
                req.query,
            )

    # -- artifacts --------------------------------------------------------------------------------------------

    def create_model_artifact(self, req: OpRequest) -> Reply:
        """POST /model_artifacts: strict decode, state defaults to UNKNOWN, no parent → UUID prefix (§3, §8)."""
        data = decode(
            req.body,
            ARTIFACT_CREATE[MODEL_ARTIFACT],
            "ModelArtifactCreate",
            defaults={"state": "UNKNOWN", "artifactType": MODEL_ARTIFACT},
        )
        with self.lock:
            return 201, self._create_artifact(MODEL_ARTIFACT, data, None).render()

    def create_artifact(self, req: OpRequest) -> Reply:
        """POST /artifacts: the oneOf ArtifactCreate decode (non-strict, no defaults, §2); no parent."""
        atype, data = self._decode_artifact(req.body, ARTIFACT_CREATE)
        with self.lock:
            return 201, self._create_artifact(self._check_artifact_type(atype, data), data, None).render()

    def upsert_model_version_artifact(self, req: OpRequest) -> Reply:
        """POST /model_versions/{id}/artifacts: non-strict oneOf decode, no defaults (§2, §8); the version must
        exist (404, checked before artifactType); 201 when the body has no id, 200 when it links one (§1)."""
        atype, data = self._decode_artifact(req.body, ARTIFACT_FULL)
        with self.lock:
            version = self._get(MV, req.path_id, "model version")
            atype = self._check_artifact_type(atype, data)
            if data.get("id") is None:
                return 201, self._create_artifact(atype, data, version.id).render()
            try:
                found = self._get_artifact(data["id"], model_only=False)
            except ApiError:
                raise bad_request(
                    f"mismatched types, artifact with id {data['id']} is not a "
                    f"{_ARTIFACT_WORDS[atype]} artifact: bad request"
                ) from None
            self._check_same_type(found, atype, data["id"])
            label = f"{_ARTIFACT_WORDS[atype]} artifact with name {found.display_name}"
            art = self._save(atype, found.name, data, existing=found, label=label)
            if version.id not in art.attributions:
                art.attributions.append(version.id)
            return 200, art.render()

    def _decode_artifact(self, body: JSON, branches: Mapping[str, Fields]) -> tuple[str | None, dict[str, JSON]]:
        """The oneOf wrapper: branch chosen by artifactType, then a non-strict decode; an unknown type leaves
        every branch nil (§2)."""
        if not isinstance(body, dict):
            raise bad_request(f"json: cannot unmarshal {_json_kind(body)} into Go value of type openapi.Artifact")
        atype = body.get("artifactType")
        if not isinstance(atype, str) or atype not in branches:
            return None, {}
        return atype, decode(body, branches[atype], _ARTIFACT_GO_NAMES[atype], strict=False)

    @staticmethod
    def _check_artifact_type(atype: str | None, data: Mapping[str, JSON] | None) -> str:
        """An unknown artifactType is 400 (§2); creating or upserting a metric needs a value (artifact.go)."""
        if atype is None:
            raise bad_request(
                "invalid artifact type, must be either ModelArtifact, DocArtifact, DataSet, "
                "Metric, or Parameter: bad request"
            )
        if data is not None and atype == "metric" and data.get("value") is None:
            raise bad_request("metric value is required: bad request")
        return atype

    @staticmethod
    def _check_same_type(found: Entity, atype: str, art_id: str) -> None:
        if found.kind != atype:
            raise bad_request(f"artifact with id {art_id} is not a {_ARTIFACT_WORDS[atype]} artifact: bad request")

    def _create_artifact(self, atype: str, data: dict[str, JSON], version: int | None) -> Entity:
        """Name defaults to a UUID; stored as "<versionId>:<name>" or "<uuid>:<name>" without parent (§3)."""
        name = data.get("name") or str(uuid.uuid4())
        stored = f"{version if version is not None else uuid.uuid4()}:{name}"
        label = f"{_ARTIFACT_WORDS[atype]} artifact with name {name}"
        existing = None
        if atype in ("metric", "parameter") and version is not None:
            # artifact.go: a metric/parameter with the same name under the same parent is updated in place.
            existing = next((a for a in self.artifacts.values() if a.kind == atype and a.name == stored), None)
        art = self._save(atype, stored, data, existing=existing, label=label)
        if version is not None and version not in art.attributions:
            art.attributions.append(version)
        return art

    def get_artifact(self, req: OpRequest) -> Reply:
        """GET /artifacts/{id}: any artifact type."""
        with self.lock:
            return 200, self._get_artifact(req.path_id, model_only=False).render()

    def get_model_artifact(self, req: OpRequest) -> Reply:
        """GET /model_artifacts/{id}: a non-model artifact is 404 (§5)."""
        with self.lock:
            return 200, self._get_artifact(req.path_id, model_only=True).render()

    def update_model_artifact(self, req: OpRequest) -> Reply:
        """PATCH /model_artifacts/{id}: strict; an omitted state resets to UNKNOWN (§7 trap)."""
        data = decode(
            req.body,
            ARTIFACT_UPDATE[MODEL_ARTIFACT],
            "ModelArtifactUpdate",
            defaults={"state": "UNKNOWN", "artifactType": MODEL_ARTIFACT},
        )
        with self.lock:
            found = self._get_artifact(req.path_id, model_only=True)
            label = f"model artifact with name {found.display_name}"
            return 200, self._save(MODEL_ARTIFACT, found.name, data, existing=found, label=label).render()

    def update_artifact(self, req: OpRequest) -> Reply:
        """PATCH /artifacts/{id}: the oneOf ArtifactUpdate decode (non-strict, no defaults)."""
        atype, data = self._decode_artifact(req.body, ARTIFACT_UPDATE)
        with self.lock:
            found = self._get_artifact(req.path_id, model_only=False)
            atype = self._check_artifact_type(atype, None)
            self._check_same_type(found, atype, req.path_id)
            label = f"{_ARTIFACT_WORDS[atype]} artifact with name {found.display_name}"
            return 200, self._save(atype, found.name, data, existing=found, label=label).render()

    def _find_artifact(self, query: Mapping[str, str], model_only: bool) -> Entity:
        """Find by (name and parentResourceId) or externalId; no/several matches → 404, missing → 400 (§5)."""
        name, parent, ext = (query.get(k) for k in ("name", "parentResourceId", "externalId"))
        if (name is None or parent is None) and ext is None:
            raise bad_request(
                "invalid parameters call, supply either (artifactName and parentResourceId), "
                "or externalId: bad request"
            )
        parent_id = validate_id(parent, "parent resource") if parent is not None else None
        matches = [
            a
            for a in self.artifacts.values()
            if name in (None, a.display_name)
            and (parent_id is None or parent_id in a.attributions)
            and (name is None or parent is None or a.name == f"{parent}:{name}")  # the stored, prefixed name
            and ext in (None, a.fields.get("externalId"))
        ]
        criteria = f"name={name or ''}, parentResourceId={parent or ''}, externalId={ext or ''}"
        found = self._one(matches, f"{'model ' if model_only else ''}artifacts found for {criteria}")
        if model_only and found.kind != MODEL_ARTIFACT:
            raise not_found(f"artifact with {criteria} is not a model artifact")
        return found

    def find_model_artifact(self, req: OpRequest) -> Reply:
        """GET /model_artifact."""
        with self.lock:
            return 200, self._find_artifact(req.query, model_only=True).render()

    def find_artifact(self, req: OpRequest) -> Reply:
        """GET /artifact."""
        with self.lock:
            return 200, self._find_artifact(req.query, model_only=False).render()

    def list_model_artifacts(self, req: OpRequest) -> Reply:
        """GET /model_artifacts."""
        with self.lock:
            return self._page([a for a in self.artifacts.values() if a.kind == MODEL_ARTIFACT], req.query)

    def list_artifacts(self, req: OpRequest) -> Reply:
        """GET /artifacts?artifactType=."""
        atype = check_enum(req.query["artifactType"], ARTIFACT_TYPE_PARAM) if "artifactType" in req.query else None
        with self.lock:
            return self._page([a for a in self.artifacts.values() if atype in (None, a.kind)], req.query)

    def list_model_version_artifacts(self, req: OpRequest) -> Reply:
        """GET /model_versions/{id}/artifacts: the parent is not checked, unknown → empty list (§5)."""
        version = validate_id(req.path_id, "parent resource")
        q = req.query
        atype = check_enum(q["artifactType"], ARTIFACT_TYPE_PARAM) if "artifactType" in q else None
        with self.lock:
            return self._page(
                [
                    a
                    for a in self.artifacts.values()
                    if version in a.attributions
                    and atype in (None, a.kind)
                    and q.get("name") in (None, a.display_name)
                    and q.get("externalId") in (None, a.fields.get("externalId"))
                ],
                q,
            )
