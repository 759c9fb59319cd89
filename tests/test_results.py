"""editnb.results: a chapter's measurement is stored with the key of everything it depends on, read
back only while that key holds, and measured again as soon as any part of it changes."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from editnb import results


@pytest.fixture
def data(tmp_path, monkeypatch):
    monkeypatch.setenv("EDITNB_DATA", str(tmp_path))
    monkeypatch.delenv("EDITNB_RECOMPUTE", raising=False)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "weights.bin").write_bytes(b"\x00" * 64)
    return tmp_path


class Counter:
    def __init__(self):
        self.calls = 0

    def __call__(self, n, scale=1.0):
        self.calls += 1
        return {"mean": n * scale, "rows": [{"k": i} for i in range(n)]}


def table(n):  # a module-level function: its source is part of the key
    return {"n": n, "twice": 2 * n}


def table_edited(n):
    return {"n": n, "twice": 2 * n + 1}


def test_second_call_reads_the_stored_result_without_computing(data, capsys):
    compute = Counter()
    first = results.measured("t", compute, profile="toy", n=3)
    second = results.measured("t", compute, profile="toy", n=3)
    assert compute.calls == 1 and first == second == {"mean": 3.0, "rows": [{"k": 0}, {"k": 1}, {"k": 2}]}
    stored = json.loads((data / "results" / "t.json").read_text())
    assert stored["result"] == first and stored["key"]["settings"] == {"n": 3}
    assert "loaded from data/results/t.json" in capsys.readouterr().out


@pytest.mark.parametrize("change", ["settings", "data", "recompute", "name"])
def test_any_change_to_what_it_depends_on_measures_again(data, monkeypatch, change):
    compute = Counter()
    results.measured("t", compute, profile="toy", n=2)
    settings, name = {"n": 2}, "t"
    if change == "settings":
        settings = {"n": 2, "scale": 0.5}
    elif change == "data":  # a retrained model: same size, other bytes
        (data / "models" / "weights.bin").write_bytes(b"\x01" * 64)
    elif change == "recompute":
        monkeypatch.setenv("EDITNB_RECOMPUTE", "1")
    else:
        name = "u"
    results.measured(name, compute, profile="toy", **settings)
    assert compute.calls == 2


def test_an_edited_function_does_not_read_the_other_ones_result(data):
    assert results.measured("t", table, profile="toy", n=4) == {"n": 4, "twice": 8}
    assert results.measured("t", table_edited, profile="toy", n=4) == {"n": 4, "twice": 9}


def helper_of_compute(n):
    return n + 1


def compute_with_helper(n):
    return helper_of_compute(n) * 2


def test_the_key_covers_the_functions_of_its_module_that_it_calls():
    source = results._function_source(compute_with_helper)
    assert "def helper_of_compute" in source and "def compute_with_helper" in source
    assert "def table_edited" not in source


def test_results_of_other_profiles_are_never_stored(data):
    compute = Counter()
    results.measured("t", compute, profile="sd15-shaped", n=2)
    results.measured("t", compute, profile="sd15-shaped", n=2)
    assert compute.calls == 2 and not (data / "results").exists()


def test_the_result_is_json_data_either_way(data):
    fresh = results.measured("t", lambda: {"a": np.float64(0.5), "b": (1, 2), 3: "x"}, profile="toy")
    assert fresh == {"a": 0.5, "b": [1, 2], "3": "x"} and type(fresh["a"]) is float


def test_a_result_that_is_not_json_data_is_refused_with_the_fix(data):
    with pytest.raises(TypeError, match="must be JSON data.*convert it first"):
        results.measured("t", lambda: {"image": np.zeros(3)}, profile="toy")


@pytest.mark.parametrize("name", ["", "../models/x", "a b"])
def test_a_name_that_is_not_a_file_name_is_refused(data, name):
    with pytest.raises(ValueError, match="letters, digits"):
        results.measured(name, Counter(), profile="toy", n=1)


def test_file_digest_ignores_docstrings_and_comments_but_not_code(tmp_path):
    path = tmp_path / "m.py"
    path.write_text('"""Doc."""\ndef f(x):\n    """Say."""\n    return x + 1  # one\n')
    before = results.file_digest(path)
    path.write_text('"""Other doc."""\ndef f(x):\n    """Other."""\n    return x + 1  # other comment\n')
    assert results.file_digest(path) == before
    path.write_text('"""Doc."""\ndef f(x):\n    """Say."""\n    return x + 2\n')
    assert results.file_digest(path) != before


def test_a_changed_editnb_module_measures_again(data):
    """The stored record names the editnb modules loaded when it was measured, with their digests;
    one of them changing since (here: the record's digest made stale) measures again."""
    compute = Counter()
    results.measured("t", compute, profile="toy", n=2)
    path = data / "results" / "t.json"
    record = json.loads(path.read_text())
    assert record["code"]["editnb.results"] == results.file_digest(Path(results.__file__))
    results.measured("t", compute, profile="toy", n=2)
    assert compute.calls == 1
    record["code"]["editnb.results"] = "0" * 64
    path.write_text(json.dumps(record))
    results.measured("t", compute, profile="toy", n=2)
    assert compute.calls == 2


def test_outputs_under_data_do_not_change_the_key_but_benchmark_items_do(data):
    """A benchmark run written to data/bench/results/ (an output) keeps every stored result; a changed
    benchmark item under data/bench/toy-pie/ (an input) or a model measures again."""
    compute = Counter()
    results.measured("t", compute, profile="toy", n=2)
    (data / "bench" / "results" / "ip2p").mkdir(parents=True)
    (data / "bench" / "results" / "ip2p" / "run.json").write_text("{}")
    (data / "results" / "other.json").write_text("{}")
    results.measured("t", compute, profile="toy", n=2)
    assert compute.calls == 1
    (data / "bench" / "toy-pie").mkdir(parents=True)
    (data / "bench" / "toy-pie" / "mapping_file.json").write_text("{}")
    results.measured("t", compute, profile="toy", n=2)
    assert compute.calls == 2
