"""`alkit eval` against metrics computed independently from `alkit predict` output."""

import json
import math

import pytest


@pytest.fixture
def pool_with_test_split(cli, imported_project):
    data = imported_project(count=30, dim=12, noise=0.9, seed=1, test_count=12, labelled_pool=9, label_test=True)
    assert cli("fit").exit_code == 0
    return data.names, {path: data.names.index(name) for path, name in data.truth.items()}


def test_eval_json_matches_metrics_recomputed_from_predictions(cli, pool_with_test_split, tmp_path):
    names, truth = pool_with_test_split
    result = cli("eval", "--json", "--bins", "5", "--plot", str(tmp_path / "plots"))
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    predictions = [json.loads(l) for l in cli("predict", "--split", "test", "--json").stdout.splitlines()]
    assert payload["n"] == len(predictions) == 12
    correct, nll, brier = 0, 0.0, 0.0
    bins = [[0, 0.0, 0.0] for _ in range(5)]  # count, confidence sum, correct sum
    for row in predictions:
        label = names[truth[row["path"]]]
        probs = row["probs"]
        hit = max(probs, key=probs.get) == label
        correct += hit
        nll -= math.log(max(probs[label], 1e-12))
        brier += sum((p - (name == label)) ** 2 for name, p in probs.items())
        confidence = max(probs.values())
        b = min(int(confidence * 5), 4)
        bins[b][0] += 1
        bins[b][1] += confidence
        bins[b][2] += hit
    n = len(predictions)
    expected_ece = sum(abs(c_sum - h_sum) / n for count, c_sum, h_sum in bins if count)
    assert payload["accuracy"] == pytest.approx(correct / n)
    assert payload["nll"] == pytest.approx(nll / n, rel=1e-5)
    assert payload["brier"] == pytest.approx(brier / n, rel=1e-5)
    assert payload["ece"] == pytest.approx(expected_ece, abs=1e-6)
    assert payload["ece_bins"] == 5 and set(payload["map"]) >= {"accuracy", "nll", "brier", "ece"}
    for key in ("reliability", "learning_curve", "report"):
        assert (tmp_path / "plots").exists() and payload["files"][key]


def test_eval_without_labelled_split_says_how_to_fix(cli, pool_with_test_split):
    result = cli("eval", "--split", "target")
    assert result.exit_code == 5 and "alkit labels import" in result.stderr


def test_eval_history_grows_per_run(cli, pool_with_test_split):
    from alkit.project import open_project
    from alkit.workflows.evaluate import read_history

    first = json.loads(cli("eval", "--json").stdout)
    cli("eval")
    history = read_history(open_project(cli.project_dir))
    assert len(history) == 2
    assert history[0]["accuracy"] == pytest.approx(first["accuracy"])
    assert history[0]["labels_used"] == 9 and history[0]["posterior_version"] == first["posterior_version"]
