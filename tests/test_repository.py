"""The model repository without HTTP: version policies, labels, config files, failures."""
from __future__ import annotations

import json
import shutil

import pytest

from edgekit.errors import BadInput, NotFound, Unavailable
from edgekit.serve.repository import (
    ModelConfig,
    ModelRepository,
    VersionPolicy,
    check_name,
    read_model_config,
)


@pytest.fixture()
def base(tmp_path, digits_out):
    for version in (1, 2, 5):
        shutil.copytree(digits_out, tmp_path / "digits" / str(version))
    return tmp_path / "digits"


def served(repository: ModelRepository) -> list[int]:
    return repository.served_versions()["digits"]


def test_version_policies_choose_what_is_served():
    assert VersionPolicy().aspired([1, 5, 2]) == [5]
    assert VersionPolicy("latest", 2).aspired([1, 5, 2]) == [5, 2]
    assert VersionPolicy("all").aspired([1, 5, 2]) == [5, 2, 1]
    assert VersionPolicy("specific", versions=(1, 9)).aspired([1, 5, 2]) == [1]
    assert VersionPolicy.from_json({"specific": {"versions": [2]}}).versions == (2,)
    with pytest.raises(BadInput, match="unknown version policy"):
        VersionPolicy.from_json({"newest": {}})


@pytest.mark.parametrize("policy, expected", [
    (VersionPolicy(), [5]), (VersionPolicy("latest", 2), [2, 5]), (VersionPolicy("all"), [1, 2, 5]),
    (VersionPolicy("specific", versions=(1, 2)), [1, 2]),
])
def test_the_repository_serves_what_the_policy_asks(base, policy, expected):
    repository = ModelRepository([ModelConfig("digits", base, policy)])
    repository.poll_once()
    assert served(repository) == expected
    assert repository.resolve("digits").version == max(expected)
    assert repository.ready


def test_labels_and_unknown_names(base):
    repository = ModelRepository([ModelConfig("digits", base, VersionPolicy("all"), labels={"stable": 1, "old": 3})])
    with pytest.raises(Unavailable, match="no version is loaded yet"):
        repository.resolve("digits")
    repository.poll_once()
    assert repository.resolve("digits", label="stable").version == 1
    with pytest.raises(NotFound, match="Specific\\(digits, 3\\)"):
        repository.resolve("digits", label="old")
    with pytest.raises(NotFound, match="label: canary"):
        repository.resolve("digits", label="canary")
    with pytest.raises(NotFound, match="Latest\\(iris\\)"):
        repository.resolve("iris")


def test_removed_versions_are_dropped_and_the_newest_remaining_serves(base):
    repository = ModelRepository([ModelConfig("digits", base)])
    repository.poll_once()
    held = repository.resolve("digits")  # a request in flight keeps its version usable
    shutil.rmtree(base / "5")
    repository.poll_once()
    assert served(repository) == [2]
    assert repository.status("digits", 5)[0]["state"] == "END"
    assert held.run("serving_default", {"pixels": __import__("numpy").zeros((1, 8, 8, 1), "float32")})["probs"].shape == (1, 10)


def test_a_failed_version_is_not_retried_until_its_files_change(base, digits_out):
    events = []
    repository = ModelRepository([ModelConfig("digits", base)], on_event=lambda kind, **f: events.append(kind))
    (base / "7").mkdir()
    (base / "7" / "model.tflite").write_bytes(b"broken")
    repository.poll_once()
    repository.poll_once()
    assert events.count("load_failed") == 1 and served(repository) == [5]
    shutil.copy(digits_out / "model_float32.tflite", base / "7" / "model.tflite")
    repository.poll_once()
    assert served(repository) == [7] and events.count("loaded") == 2


def test_config_file(tmp_path, base):
    config = tmp_path / "models.json"
    config.write_text(json.dumps({"model_config_list": [
        {"name": "digits", "base_path": "digits", "model_version_policy": {"latest": {"num_versions": 2}},
         "version_labels": {"stable": 2}, "variant": "float16"}]}))
    (entry,) = read_model_config(config)
    assert entry.base_path == base and entry.policy == VersionPolicy("latest", 2)
    assert entry.labels == {"stable": 2} and entry.variant == "float16"
    repository = ModelRepository([entry])
    repository.poll_once()
    assert repository.resolve("digits").path.name == "model_float16.tflite"


@pytest.mark.parametrize("document, fragment", [
    ("{", "is not valid"),
    ({"models": []}, "is not valid"),
    ({"model_config_list": [{"name": "x"}]}, "needs name and base_path"),
    ({"model_config_list": [{"name": "../x", "base_path": "x"}]}, "invalid model name"),
    ({"model_config_list": [{"name": "a", "base_path": "a"}, {"name": "a", "base_path": "b"}]}, "names a model twice"),
])
def test_bad_config_files(tmp_path, document, fragment):
    config = tmp_path / "models.json"
    config.write_text(document if isinstance(document, str) else json.dumps(document))
    with pytest.raises(BadInput, match=fragment):
        read_model_config(config)


def test_names_cannot_escape_the_repository():
    assert check_name("digits-v2.1") == "digits-v2.1"
    for bad in ("../etc", "a/b", "", ".hidden"):
        with pytest.raises(BadInput):
            check_name(bad)


def test_an_out_dir_serves_tflite_and_names_a_tfjs_variant_as_not_servable(digits_out):
    from edgekit.serve.repository import model_file

    assert model_file(digits_out, None).name == "model_int8.tflite"  # TF.js artifacts beside it change nothing
    with pytest.raises(BadInput, match="tfjs_uint8 .* is a tfjs artifact; serve runs TFLite"):
        model_file(digits_out, "tfjs_uint8")


MANIFEST_FIELDS = {"schema_version": 1, "created_at": "x", "versions": {}, "source": {}, "signature": "serving_default",
                   "signatures": {}, "check_inputs": {}}
BROKEN_VERSIONS = {  # what a careless deploy puts in a version folder
    "manifest.json": ["[]", "null", "{}", '"text"', "\xff\xfe not utf-8", json.dumps({**MANIFEST_FIELDS, "artifacts": [1]}),
                      json.dumps({**MANIFEST_FIELDS, "artifacts": [{"name": "a"}]}),
                      json.dumps({**MANIFEST_FIELDS, "schema_version": 99, "artifacts": []}),
                      json.dumps({**MANIFEST_FIELDS, "artifacts": [{"name": "tflite_int8", "format": "tflite",
                                  "variant": "int8", "status": "ok", "signature": "serving_default",
                                  "file": "../../../etc/passwd"}]})],
    "model.tflite": [b"", b"TFL3" + b"\x00" * 60, "truncated"],
}


def _broken_folders(base, digits_out):
    number = 10
    for file_name, contents in BROKEN_VERSIONS.items():
        for content in contents:
            folder = base / str(number)
            folder.mkdir()
            if content == "truncated":
                content = (digits_out / "model_int8.tflite").read_bytes()[:3000]
            (folder / file_name).write_bytes(content if isinstance(content, bytes) else content.encode("utf-8", "surrogateescape"))
            number += 1
    (base / "50").write_text("a file named like a version")
    return list(range(10, number))


def test_broken_versions_fail_alone_and_the_poller_goes_on(base, digits_out):
    """Every broken version ends in END with its reason; the newest good version serves,
    a later good one loads, and a deleted one unloads."""
    events = []
    repository = ModelRepository([ModelConfig("digits", base, VersionPolicy("all"))],
                                 on_event=lambda kind, **fields: events.append((kind, fields)))
    broken = _broken_folders(base, digits_out)
    repository.poll_once()
    assert served(repository) == [1, 2, 5]
    for version in broken:
        (status,) = repository.status("digits", version)
        assert status["state"] == "END" and status["status"]["error_message"].startswith("failed to load"), status
    assert not [e for e in events if e[0] == "poll_error"]
    shutil.copytree(digits_out, base / "60")
    shutil.rmtree(base / "2")
    repository.poll_once()
    assert served(repository) == [1, 5, 60]
    assert repository.status("digits", 2)[0]["state"] == "END"
    latest = ModelRepository([ModelConfig("digits", base)])
    latest.poll_once()
    assert served(latest) == [60]


def test_a_manifest_cannot_point_outside_its_version_folder(base):
    from edgekit.serve.repository import model_file

    manifest = json.loads((base / "1" / "manifest.json").read_text())
    next(a for a in manifest["artifacts"] if a["variant"] == "int8")["file"] = "../5/model_int8.tflite"
    (base / "1" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BadInput, match="outside its folder"):
        model_file(base / "1", None)


def test_when_every_version_failed_the_answer_says_why(tmp_path):
    (tmp_path / "4").mkdir()
    (tmp_path / "4" / "model.tflite").write_bytes(b"\x00" * 100)
    repository = ModelRepository([ModelConfig("digits", tmp_path)])
    repository.poll_once()
    with pytest.raises(Unavailable, match="no version is loaded: version 4 failed to load") as raised:
        repository.resolve("digits")
    assert "fix or replace that version's files" in raised.value.hint
