"""Pure Label Studio logic with fakes: labeling config, image references, votes -> labels, retries."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alkit.errors import ConfigError, ExternalServiceError, InputError
from alkit.labelstudio.config import image_reference, label_config, storage_directories
from alkit.labelstudio.mapping import VotePolicy, build_task, choice_result, parse_policy, prediction_of, task_outcome

CLASSES = ["cat", "dog", "bird"]


def annotation(aid, user, choices, cancelled=False, at="2026-01-01T00:00:00Z"):
    result = [] if choices is None else [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": choices}}]
    return {"id": aid, "completed_by": user, "result": result, "was_cancelled": cancelled, "updated_at": at}


def task(*annotations, tid=7, image="3"):
    return {"id": tid, "data": {"alkit_id": image}, "annotations": list(annotations)}


def test_label_config_is_valid_xml_with_escaped_class_names():
    config = label_config(["cat", 'say "hi" & <go>'])
    root = ET.fromstring(config)
    assert [c.get("value") for c in root.iter("Choice")] == ["cat", 'say "hi" & <go>']
    assert root.find("Choices").get("name") == "label" and root.find("Image").get("value") == "$image"
    with pytest.raises(ConfigError, match="classes set"):
        label_config([])


def test_image_reference_local_files_and_url_prefix(tmp_path):
    root = tmp_path / "root"
    (root / "imgs").mkdir(parents=True)
    image = root / "imgs" / "a b.png"
    assert image_reference(str(image), str(root), None) == "/data/local-files/?d=imgs/a%20b.png"
    assert image_reference(str(image), str(root), "http://cdn/x/") == "http://cdn/x/imgs/a%20b.png"
    assert image_reference("/srv/p.png", None, "http://cdn") == "http://cdn/srv/p.png"
    with pytest.raises(InputError, match="outside"):
        image_reference(str(tmp_path / "elsewhere.png"), str(root), None)
    with pytest.raises(ConfigError, match="local-files-root"):
        image_reference(str(image), None, None)
    assert storage_directories([str(image)], str(root)) == [str((root / "imgs").resolve())]
    with pytest.raises(InputError, match="sub-directory"):
        storage_directories([str(root / "top.png")], str(root))


def test_build_task_with_and_without_prediction():
    prediction = prediction_of({"predicted_class": "dog", "probability": 0.61}, CLASSES)
    assert build_task(5, "/data/x", prediction, "m1") == {
        "data": {"image": "/data/x", "alkit_id": "5"},
        "predictions": [{"model_version": "m1", "result": choice_result("dog"), "score": 0.61}],
    }
    assert prediction_of({"predicted_class": "zebra", "probability": 0.9}, CLASSES) is None
    assert prediction_of(None, CLASSES) is None
    assert "predictions" not in build_task(5, "/data/x", None, "m1")


def test_skipped_empty_unknown_and_multiple_choices_are_reported_not_labels():
    outcome = task_outcome(
        task(
            annotation(1, 10, ["cat"]),
            annotation(2, 11, None, cancelled=True),
            annotation(3, 12, None),
            annotation(4, 13, ["zebra"]),
            annotation(5, 14, ["cat", "dog"]),
        ),
        CLASSES,
        VotePolicy.MAJORITY,
    )
    assert outcome.image_id == 3 and outcome.task_id == 7
    assert outcome.labels == {"ls-user-10": ("cat", 1)}
    assert (outcome.skipped, outcome.empty) == (1, 1)
    assert [(c["annotation_id"], c["reason"], c["value"]) for c in outcome.conflicts] == [
        (4, "unknown class", ["zebra"]),
        (5, "multiple choices", ["cat", "dog"]),
    ]
    assert outcome.disagreement is None


def test_policies_on_a_disagreement():
    votes = task(
        annotation(1, 10, ["cat"], at="2026-01-01T00:00:01Z"),
        annotation(2, 11, ["dog"], at="2026-01-01T00:00:03Z"),
        annotation(3, 12, ["cat"], at="2026-01-01T00:00:02Z"),
    )
    majority = task_outcome(votes, CLASSES, VotePolicy.MAJORITY)
    assert majority.labels == {"ls-user-10": ("cat", 1), "ls-user-11": ("dog", 2), "ls-user-12": ("cat", 3)}
    assert majority.disagreement == {"votes": {"cat": 2, "dog": 1}, "resolution": "majority:cat"}
    unanimous = task_outcome(votes, CLASSES, VotePolicy.UNANIMOUS)
    assert unanimous.labels == {} and unanimous.disagreement["resolution"] == "unresolved"
    latest = task_outcome(votes, CLASSES, VotePolicy.LATEST)
    assert latest.labels == {"ls-user-11": ("dog", 2)} and latest.disagreement["resolution"] == "latest:dog"
    tie = task_outcome(task(annotation(1, 10, ["cat"]), annotation(2, 11, ["dog"])), CLASSES, VotePolicy.MAJORITY)
    assert tie.disagreement["resolution"] == "tie"
    with pytest.raises(InputError, match="majority, unanimous, latest"):
        parse_policy("vote")


def test_same_annotator_twice_keeps_the_newest():
    outcome = task_outcome(
        task(annotation(1, 10, ["cat"], at="2026-01-01T00:00:01Z"), annotation(2, 10, ["dog"], at="2026-01-01T00:00:05Z")),
        CLASSES,
        VotePolicy.MAJORITY,
    )
    assert outcome.labels == {"ls-user-10": ("dog", 2)} and outcome.disagreement is None


@given(st.lists(st.tuples(st.integers(0, 5), st.sampled_from(CLASSES + ["zebra"]), st.booleans()), max_size=12))
def test_majority_labels_match_a_naive_reference(rows):
    annotations = [
        annotation(i, user, [choice], cancelled=cancelled, at=f"2026-01-01T00:00:{i:02d}Z")
        for i, (user, choice, cancelled) in enumerate(rows)
    ]
    outcome = task_outcome(task(*annotations), CLASSES, VotePolicy.MAJORITY)
    # Reference: the last non-cancelled, known-class vote of each annotator.
    expected = {}
    for i, (user, choice, cancelled) in enumerate(rows):
        if not cancelled and choice in CLASSES:
            expected[f"ls-user-{user}"] = (choice, i)
    assert outcome.labels == expected
    assert outcome.skipped == sum(c for _, _, c in rows)
    assert len(outcome.conflicts) == sum(1 for _, ch, c in rows if not c and ch == "zebra")
    counts = Counter(choice for choice, _ in expected.values())
    assert (outcome.disagreement is not None) == (len(counts) > 1)


def test_client_retries_5xx_and_connection_errors_then_gives_a_clean_error():
    import httpx
    from label_studio_sdk.core.api_error import ApiError

    from alkit.labelstudio.client import LabelStudioClient, RetryPolicy

    slept = []
    client = LabelStudioClient("http://127.0.0.1:9", "sekrit-token-123", retry=RetryPolicy(attempts=3), sleep=slept.append)
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ApiError(status_code=502, body="<html>bad gateway</html>")
        return "ok"

    assert client._call("do a thing", flaky) == "ok" and slept == [0.5, 1.0]

    def down():
        raise httpx.ConnectError("[Errno 111] Connection refused sekrit-token-123")

    with pytest.raises(ExternalServiceError, match="cannot reach Label Studio .* after 3 attempts") as caught:
        client._call("do a thing", down)
    assert "sekrit-token-123" not in str(caught.value)

    def unauthorized():
        raise ApiError(status_code=401, body={"detail": "Invalid token."})

    calls.clear()
    with pytest.raises(ExternalServiceError, match="refused the token .*401: Invalid token.*ALKIT_LS_TOKEN"):
        client._call("check", unauthorized)

    def missing_html():
        raise ApiError(status_code=404, body="<!DOCTYPE html><html>...</html>")

    with pytest.raises(ExternalServiceError, match="404: HTML error page.*alkit ls connect"):
        client._call("import", missing_html, idempotent=False)

    def timeout():
        calls.append(1)
        raise httpx.ReadTimeout("timed out")

    calls.clear()
    with pytest.raises(ExternalServiceError, match="after 1 attempts"):  # a non-idempotent call that may have landed
        client._call("import", timeout, idempotent=False)
    assert len(calls) == 1
    assert "sekrit" not in repr(client)


def test_missing_token_or_url_is_a_clear_error():
    from alkit.labelstudio.client import LabelStudioClient

    with pytest.raises(ExternalServiceError, match="ALKIT_LS_TOKEN"):
        LabelStudioClient("http://x", None)
    with pytest.raises(ExternalServiceError, match="ls connect"):
        LabelStudioClient("", "t")


def test_lock_is_exclusive_and_released(project):
    from alkit.errors import LockedError
    from alkit.locking import project_lock

    with project_lock(project, "t") as path:
        with pytest.raises(LockedError, match=r"locked by pid \d+ .*--wait"):
            with project_lock(project, "t"):
                pass
        with pytest.raises(LockedError):
            with project_lock(project, "t", wait=True, timeout_s=0.3):
                pass
        assert path.parent == project.artefacts_dir
    with project_lock(project, "t"):
        pass


PRINTABLE = st.text(st.characters(whitelist_categories=("L", "N", "P", "S", "Zs")), min_size=1, max_size=8)


@given(st.lists(PRINTABLE.filter(lambda s: s.strip() == s and s), min_size=1, max_size=6, unique=True))
def test_alkits_own_config_matches_its_classes(names):
    from alkit.labelstudio.config import config_differences

    assert config_differences(label_config(names), names) == []


def test_config_differences_name_the_renamed_control_and_each_added_or_missing_choice():
    from alkit.labelstudio.config import config_differences

    config = label_config(CLASSES)
    assert config_differences(config.replace('name="label"', 'name="answer"'), CLASSES) == [
        "the Choices control is named 'answer' in Label Studio, alkit reads 'label'"
    ]
    added = config.replace('<Choice value="bird"/>', '<Choice value="bird"/><Choice value="zebra"/>')
    assert config_differences(added, CLASSES) == ["choices in Label Studio but not alkit classes: 'zebra'"]
    dropped = config.replace('<Choice value="dog"/>', "")
    assert config_differences(dropped, CLASSES) == ["alkit classes missing from the Label Studio choices: 'dog'"]
    assert config_differences("<View><Image name='image' value='$image'/></View>", CLASSES) == [
        "the labeling config has no <Choices name='label'> control"
    ]
    assert "not valid XML" in config_differences("<View>", CLASSES)[0]


def test_task_keys_carry_the_project_and_the_content_and_the_facts_go_into_data():
    from alkit.labelstudio.mapping import split_task_key, task_key

    key = task_key("p" * 32, "ab" * 32, 5)
    assert split_task_key({"alkit_key": key}) == ("p" * 32, "ab" * 32)
    assert task_key("u", None, 5) == "u:id-5"
    assert split_task_key({"alkit_id": "5"}) is None and split_task_key({"alkit_key": 3}) is None
    built = build_task(5, "/img.png", None, "v1", key, {"score": 0.25, "rank": 1, "round": 2, "strategy": "bald", "posterior_version": None})
    assert built == {"data": {
        "image": "/img.png", "alkit_id": "5", "alkit_key": key, "alkit_project": "p" * 32,
        "alkit_score": 0.25, "alkit_rank": 1, "alkit_round": 2, "alkit_strategy": "bald",
    }}


def test_path_of_reference_inverts_image_reference(tmp_path):
    from alkit.labelstudio.config import path_of_reference

    root = tmp_path / "root"
    image = root / "sub dir" / "a&b.png"
    image.parent.mkdir(parents=True)
    image.write_bytes(b"x")
    local = image_reference(str(image), str(root), None)
    assert path_of_reference(local, str(root), None) == str(image.resolve())
    remote = image_reference(str(image), str(root), "http://files.example/imgs")
    assert path_of_reference(remote, str(root), "http://files.example/imgs") == str(image.resolve())
    assert path_of_reference("/data/local-files/?d=../../etc/passwd", str(root), None) is None  # never outside the root
    assert path_of_reference("http://elsewhere/x.png", str(root), None) is None
    assert path_of_reference(None, str(root), None) is None
