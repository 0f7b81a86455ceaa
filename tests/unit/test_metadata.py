"""ConfigMap-mounted metadata: layout, key spellings, value types, errors that name the key."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from job.errors import ConfigError
from job.settings.metadata import (
    ModelArtifactMeta,
    ModelMetadata,
    comparable_custom_properties,
    load_metadata,
    to_custom_properties,
    writable_custom_properties,
)


def write_configmap(root: Path, data: dict[str, str]) -> Path:
    """Lay ``data`` out the way the kubelet mounts a ConfigMap: key -> ..data/key -> ..<timestamp>/key."""
    root.mkdir(parents=True, exist_ok=True)
    stamp = root / "..2024_05_01_10_00_00.123456789"
    stamp.mkdir()
    for key, value in data.items():
        (stamp / key).write_text(value)
    (root / "..data").symlink_to(stamp.name)
    for key in data:
        (root / key).symlink_to(f"..data/{key}")
    return root


def b64json(value: object) -> str:
    return base64.b64encode(json.dumps(value, separators=(",", ":"), sort_keys=True).encode()).decode()


README_EXAMPLE = {
    "RegisteredModel.name": "my-model",
    "RegisteredModel.description": "Model description",
    "RegisteredModel.owner": "data-science-team",
    "RegisteredModel.custom_properties": '{"project": "sentiment-analysis", "team": "nlp"}\n',
    "ModelVersion.name": "1.0.0",
    "ModelVersion.description": "Initial release",
    "ModelVersion.author": "Jane Doe",
    "ModelVersion.custom_properties": '{"accuracy": 0.95, "f1_score": 0.93}\n',
    "ModelArtifact.name": "sentiment-analyzer",
    "ModelArtifact.model_format_name": "tensorflow",
    "ModelArtifact.model_format_version": "2.8",
    "ModelArtifact.storage_key": "s3-connection",
    "ModelArtifact.custom_properties": '{"model_size_mb": 438, "inference_time_ms": 120}\n',
}


def test_readme_example_in_kubelet_layout(tmp_path: Path) -> None:
    meta = load_metadata(write_configmap(tmp_path / "cm", README_EXAMPLE))

    assert meta.registered_model.create_body() == {
        "name": "my-model",
        "description": "Model description",
        "owner": "data-science-team",
        "customProperties": {
            "project": {"metadataType": "MetadataStringValue", "string_value": "sentiment-analysis"},
            "team": {"metadataType": "MetadataStringValue", "string_value": "nlp"},
        },
    }
    assert meta.model_version.create_body() == {
        "name": "1.0.0",
        "description": "Initial release",
        "author": "Jane Doe",
        "customProperties": {
            "accuracy": {"metadataType": "MetadataDoubleValue", "double_value": 0.95},
            "f1_score": {"metadataType": "MetadataDoubleValue", "double_value": 0.93},
        },
    }
    assert meta.model_artifact.create_body() == {
        "name": "sentiment-analyzer",
        "modelFormatName": "tensorflow",
        "modelFormatVersion": "2.8",
        "storageKey": "s3-connection",
        "customProperties": {
            "model_size_mb": {"metadataType": "MetadataIntValue", "int_value": "438"},
            "inference_time_ms": {"metadataType": "MetadataIntValue", "int_value": "120"},
        },
    }


def test_camel_case_keys_as_the_ui_backend_writes_them(tmp_path: Path) -> None:
    data = {
        "RegisteredModel.id": "7",
        "ModelVersion.name": "v1",
        "ModelVersion.externalId": "ext-1",
        "ModelVersion.customProperties": '{"a": "b"}',
        "ModelArtifact.modelFormatName": "onnx",
        "ModelArtifact.modelFormatVersion": "1",
        "ModelArtifact.storageKey": "k",
        "ModelArtifact.storagePath": "p",
        "ModelArtifact.serviceAccountName": "sa",
        "ModelArtifact.model_source_kind": "Job",
        "ModelArtifact.modelSourceName": "job-1",
    }
    meta = load_metadata(write_configmap(tmp_path, data))
    assert meta.registered_model.id == "7"
    assert meta.model_version.external_id == "ext-1"
    assert meta.model_version.custom_properties == {"a": {"metadataType": "MetadataStringValue", "string_value": "b"}}
    assert meta.model_artifact == ModelArtifactMeta(
        model_format_name="onnx",
        model_format_version="1",
        storage_key="k",
        storage_path="p",
        service_account_name="sa",
        model_source_kind="Job",
        model_source_name="job-1",
    )
    assert meta.model_artifact.create_body() == {
        "modelFormatName": "onnx",
        "modelFormatVersion": "1",
        "storageKey": "k",
        "storagePath": "p",
        "serviceAccountName": "sa",
        "modelSourceKind": "Job",
        "modelSourceName": "job-1",
    }
    # ids never go into a create body (the strict decoder rejects them, tests/standin/BEHAVIOURS.md §2)
    assert "id" not in meta.registered_model.create_body()


def test_plain_directory_trailing_newlines_empty_values_and_foreign_files(tmp_path: Path) -> None:
    (tmp_path / "RegisteredModel.name").write_text("m\n")
    (tmp_path / "ModelVersion.description").write_text("line one\nline two\n\n")
    (tmp_path / "ModelVersion.author").write_text("")  # empty counts as unset
    (tmp_path / "README").write_text("not metadata")
    (tmp_path / "Other.thing").write_text("ignored")
    (tmp_path / "..data").mkdir()
    meta = load_metadata(tmp_path)
    assert meta.registered_model.name == "m"
    assert meta.model_version.description == "line one\nline two"
    assert meta.model_version.author is None


def test_empty_directory_gives_empty_metadata(tmp_path: Path) -> None:
    assert load_metadata(tmp_path) == ModelMetadata()


@pytest.mark.parametrize(
    "key", ["RegisteredModel.nmae", "ModelVersion.uri", "ModelArtifact.state", "ModelArtifact.a.b"]
)
def test_unknown_key_under_a_known_prefix_is_an_error_naming_it(tmp_path: Path, key: str) -> None:
    (tmp_path / key).write_text("x")
    with pytest.raises(ConfigError, match=f"unknown metadata key '{key}'"):
        load_metadata(tmp_path)


def test_snake_and_camel_spelling_of_one_field_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "ModelVersion.custom_properties").write_text("{}")
    (tmp_path / "ModelVersion.customProperties").write_text("{}")
    with pytest.raises(ConfigError, match=r"ModelVersion\.customProperties.*ModelVersion\.custom_properties|both"):
        load_metadata(tmp_path)


@pytest.mark.parametrize("make", ["missing", "file"])
def test_path_must_be_a_directory(tmp_path: Path, make: str) -> None:
    target = tmp_path / "cm"
    if make == "file":
        target.write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        load_metadata(target)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{not json", "invalid JSON"),
        ('{"a": NaN}', "invalid JSON"),
        ("[1, 2]", "expected a JSON object, got list"),
        ('"s"', "expected a JSON object, got str"),
        ('{"a": null}', "custom property 'a' is null"),
        ('{"a": 4294967296}', "does not fit the registry's int32"),
        ('{"a": {"metadataType": "MetadataProtoValue", "proto_value": "x"}}', "without a usable value"),
        ('{"a": {"metadataType": "MetadataStringValue"}}', "without a usable value"),
    ],
)
def test_bad_custom_properties_name_the_key_and_the_path(tmp_path: Path, text: str, expected: str) -> None:
    (tmp_path / "ModelVersion.custom_properties").write_text(text)
    with pytest.raises(ConfigError) as info:
        load_metadata(tmp_path)
    message = str(info.value)
    assert message.startswith(f"ModelVersion.custom_properties in {tmp_path}: ")
    assert expected in message


def test_non_utf8_value_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "ModelArtifact.name").write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match=r"ModelArtifact\.name .*not UTF-8"):
        load_metadata(tmp_path)


def test_every_value_type_maps_to_its_wire_form() -> None:
    wire = {"metadataType": "MetadataIntValue", "int_value": "5"}
    out = to_custom_properties(
        {"s": "x", "i": -3, "f": 1.5, "t": True, "b": False, "l": [1, "a"], "d": {"k": {"n": 1}}, "w": wire}
    )
    assert out == {
        "s": {"metadataType": "MetadataStringValue", "string_value": "x"},
        "i": {"metadataType": "MetadataIntValue", "int_value": "-3"},
        "f": {"metadataType": "MetadataDoubleValue", "double_value": 1.5},
        "t": {"metadataType": "MetadataBoolValue", "bool_value": True},  # bool is not an int
        "b": {"metadataType": "MetadataBoolValue", "bool_value": False},
        "l": {"metadataType": "MetadataStructValue", "struct_value": b64json({"items": [1, "a"]})},
        "d": {"metadataType": "MetadataStructValue", "struct_value": b64json({"k": {"n": 1}})},
        "w": wire,
    }
    assert json.loads(base64.b64decode(out["d"]["struct_value"])) == {"k": {"n": 1}}


@pytest.mark.parametrize("value", [None, 2**31, -(2**31) - 1, float("inf"), object()])
def test_unmappable_values_are_config_errors(value: object) -> None:
    with pytest.raises(ConfigError, match="custom property 'k'"):
        to_custom_properties({"k": value}, where="here")


def test_int32_bounds_are_accepted() -> None:
    out = to_custom_properties({"lo": -(2**31), "hi": 2**31 - 1})
    assert out["lo"]["int_value"] == "-2147483648"
    assert out["hi"]["int_value"] == "2147483647"


def test_struct_read_back_as_plain_json_is_re_encoded_for_writing() -> None:
    # The server returns struct_value as plain JSON text but wants base64 on input (§6).
    read = {
        "s": {"metadataType": "MetadataStructValue", "struct_value": '{"b": 2, "a": [1]}'},
        "already": {"metadataType": "MetadataStructValue", "struct_value": b64json({"x": 1})},
        "str": {"metadataType": "MetadataStringValue", "string_value": '{"not": "a struct"}'},
    }
    out = writable_custom_properties(read)
    assert out["s"]["struct_value"] == b64json({"a": [1], "b": 2})
    assert out["already"]["struct_value"] == b64json({"x": 1})
    assert out["str"] == read["str"]
    assert writable_custom_properties(None) == {}


def test_comparable_form_is_equal_for_sent_and_read_back_properties() -> None:
    sent = to_custom_properties({"d": {"a": 1}, "i": 3, "f": 2.0, "s": "x"})
    read_back = {
        "d": {"metadataType": "MetadataStructValue", "struct_value": '{"a":1}'},
        "i": {"metadataType": "MetadataIntValue", "int_value": "3"},
        "f": {"metadataType": "MetadataDoubleValue", "double_value": 2},
        "s": {"metadataType": "MetadataStringValue", "string_value": "x"},
    }
    assert comparable_custom_properties(sent) == comparable_custom_properties(read_back)
    assert comparable_custom_properties(sent)["d"] == ("MetadataStructValue", {"a": 1})
