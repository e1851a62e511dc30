"""The model repository without HTTP: version policies, labels, config files, failures."""
from __future__ import annotations

import json
import shutil

import pytest

from edgekit.errors import BadInput, NotFound, Unavailable
from edgekit.serve.repository import ModelConfig, ModelRepository, VersionPolicy, check_name, read_model_config


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
