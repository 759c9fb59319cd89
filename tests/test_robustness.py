"""Issue 18, "nothing silently wrong": benchmark folders, benchmark data and options, the CLI.

Each test is a case of the issue that gave a wrong result or an unclear error; it asserts the
right result or an error that says what was wrong and how to fix it.  Inputs: images, masks,
prompts and arguments of library calls are in tests/test_robustness_inputs.py."""
import json

import numpy as np
import pytest
import torch

from editnb import cli
from editnb.bench import data as D
from editnb.bench import runner as R
from editnb.runtime import data_dir

CALLS = []


@R.register("robust-identity", needs=("target_prompt",))
def _identity(ctx, item, generator, steps, gain: float = 1.0):
    """Returns the source image (a method that costs nothing)."""
    CALLS.append(item.id)
    return item.image


@R.register("robust-other", needs=("target_prompt",))
def _other(ctx, item, generator, steps):
    """Another free method."""
    return item.image


@R.register("robust-seeded", needs=("target_prompt",))
def _seeded(ctx, item, generator, steps, pause: float = 0.0):
    """The source image plus noise from the run's seed (runs of two seeds differ in every image);
    `pause` seconds per item, so that two concurrent runs overlap."""
    import time

    time.sleep(pause)
    noise = torch.randint(0, 60, np.asarray(item.image).shape, generator=generator).numpy()
    return (np.asarray(item.image).astype(int) + noise).clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def pie(tmp_path_factory):
    return D.write_toy_pie(tmp_path_factory.mktemp("pie") / "toy-pie", per_type=1)


def _run(method, data, out, **kw):
    return R.run(method, data, out, process_index=0, num_processes=1, **{"steps": 2, "limit": 2, **kw})


# ------------------------------------------------------------------ run folders are keyed


def test_a_folder_refuses_results_of_other_settings(pie, tmp_path):
    out = tmp_path / "run"
    _run("robust-identity", pie, out)
    for change, named in [({"method": "robust-other"}, "method"), ({"steps": 3}, "steps"), ({"seed": 1}, "seed"),
                          ({"options": {"gain": 2.0}}, "options")]:
        kw = {"method": "robust-identity", **change}
        with pytest.raises(ValueError, match=rf"other settings \({named}: .*new --out folder"):
            _run(kw.pop("method"), pie, out, **kw)
    assert len(R.rows(out)) == 2 and R.summarize(out)["method"] == "robust-identity"
    # the same settings resume (nothing recomputed), and may extend the folder to more items
    CALLS.clear()
    _run("robust-identity", pie, out, limit=3)
    assert len(CALLS) == 1 and len(R.rows(out)) == 3


def test_rows_record_their_settings_and_data_is_part_of_the_key(pie, tmp_path):
    out = tmp_path / "run"
    _run("robust-identity", pie, out, options={"gain": 0.5})
    settings = R.rows(out)[0]["settings"]
    assert settings["method"] == "robust-identity" and settings["steps"] == 2 and settings["seed"] == 0
    assert settings["profile"] == "toy" and settings["options"] == {"gain": 0.5}
    assert json.loads((out / "run.json").read_text())["settings"] == settings
    other = D.write_toy_pie(tmp_path / "other-pie", per_type=1, seed=1)  # other items, other mapping
    with pytest.raises(ValueError, match="data: "):
        _run("robust-identity", other, out, options={"gain": 0.5})


def test_unknown_method_options_are_refused(pie, tmp_path):
    with pytest.raises(ValueError, match=r"no option \['strength'\]; its options are \{'gain': 1.0\}"):
        _run("robust-identity", pie, tmp_path / "run", options={"strength": 0.7})


def test_a_folder_of_an_older_version_is_not_extended(pie, tmp_path):
    out = tmp_path / "run"
    (out / "rows").mkdir(parents=True)
    (out / "run.json").write_text(json.dumps({"method": "robust-identity", "steps": 2, "seed": 0}))
    (out / "rows" / "x.json").write_text(json.dumps({"id": "x", "method": "robust-identity", "seconds": 1.0}))
    with pytest.raises(ValueError, match="did not record their settings"):
        _run("robust-identity", pie, out)


def test_a_table_of_mixed_rows_is_refused(pie, tmp_path):
    out = tmp_path / "run"
    _run("robust-identity", pie, out)
    path = sorted((out / "rows").glob("*.json"))[0]
    row = json.loads(path.read_text())
    row["settings"]["steps"] = 50
    path.write_text(json.dumps(row))
    with pytest.raises(ValueError, match="mixes rows of 2 different settings"):
        R.table([out])


# ------------------------------------------------------------------ benchmark data and options


@pytest.mark.parametrize("limit", [0, -1, 1.5])
def test_limit_must_be_a_positive_count(pie, tmp_path, limit):
    with pytest.raises(ValueError, match="limit must be a positive number of items"):
        _run("robust-identity", pie, tmp_path / "run", limit=limit)


@pytest.mark.parametrize("steps", [0, -3, 2.5, True])
def test_runner_checks_steps_before_any_compute(pie, tmp_path, steps):
    CALLS.clear()
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        _run("robust-identity", pie, tmp_path / "run", steps=steps)
    assert not CALLS


def _edit_mapping(root, fn):
    mapping = root / "mapping_file.json"
    entries = json.loads(mapping.read_text())
    fn(entries)
    mapping.write_text(json.dumps(entries))


@pytest.fixture
def own_pie(tmp_path):
    return D.write_toy_pie(tmp_path / "pie", per_type=1)


def test_three_blend_words_keep_the_first_two_as_the_official_script(own_pie):
    def three(entries):
        next(iter(entries.values()))["blended_word"] = "red blue circle"
    _edit_mapping(own_pie, three)
    assert D.load_pie_bench(own_pie)[0].blend_words == ("red", "blue")


def test_invalid_mapping_json_and_missing_keys_are_named(own_pie):
    mapping = own_pie / "mapping_file.json"
    good = mapping.read_text()
    mapping.write_text(good[:-5])
    with pytest.raises(ValueError, match=r"mapping_file.json is not valid JSON \(line \d+"):
        D.load_pie_bench(own_pie)
    mapping.write_text(good)

    def drop(entries):
        del entries[sorted(entries)[0]]["editing_prompt"]
    _edit_mapping(own_pie, drop)
    with pytest.raises(ValueError, match=r"item 100000 .* lacks \['editing_prompt'\]"):
        D.load_pie_bench(own_pie)
    with pytest.raises(ValueError, match="unknown editing types"):
        D.load_pie_bench(own_pie, types=["12"])


@pytest.mark.parametrize("size", [(64, 48), (60, 60)])
def test_bad_image_sizes_are_refused_before_any_compute(own_pie, tmp_path, size):
    from PIL import Image

    first = json.loads((own_pie / "mapping_file.json").read_text())["100000"]
    path = own_pie / "annotation_images" / first["image_path"]
    Image.open(path).resize(size).save(path)
    CALLS.clear()
    with pytest.raises(ValueError, match=r"item 100000: the image is \d+x\d+; benchmark images must be square"):
        _run("robust-identity", own_pie, tmp_path / "run")
    assert not CALLS


def test_missing_relative_data_folder_names_the_shipped_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="does not exist .*relative paths start at the current folder.*pass that path"):
        D.load_pie_bench("data/bench/toy-pie")


# ------------------------------------------------------------------ the CLI: defaults and one-line errors


def test_default_data_works_from_outside_the_repository(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert (data_dir() / "bench" / "toy-pie").is_dir()
    code = cli.main(["bench", "run", "--method", "robust-identity", "--out", "run", "--limit", "1", "--steps", "2"])
    assert code == 0, capsys.readouterr().err
    assert "1/1 items done" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--steps", "0"], "steps must be a positive integer"),
    (["--limit", "0"], "limit must be a positive number of items"),
    (["--limit", "-2"], "limit must be a positive number of items"),
    (["--option", "strength"], "--option takes NAME=VALUE"),
    (["--option", "strength=0.7"], "has no option"),
    (["--data", "nowhere"], "does not exist"),
])
def test_cli_user_errors_are_one_line(tmp_path, capsys, args, message):
    code = cli.main(["bench", "run", "--method", "robust-identity", "--out", str(tmp_path / "run"), *args])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and message in err and "Traceback" not in err


# ------------------------------------------------------------------ round two: data, folders, writers


def _race(data, out, seeds, barrier):
    """One `bench run` of robust-seeded into `out` with each seed, started together in processes."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")  # the registered test methods come along
    results = ctx.Queue()

    def one(seed):
        barrier.wait()
        try:
            _run("robust-seeded", data, out, seed=seed, limit=4, options={"pause": 0.3})
            results.put((seed, "ok"))
        except ValueError as e:
            results.put((seed, str(e)))

    procs = [ctx.Process(target=one, args=(seed,)) for seed in seeds]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    return dict(results.get(timeout=5) for _ in procs)


@pytest.mark.parametrize("seeds", [(0, 1), (0, 0)])
def test_two_concurrent_runs_into_one_folder_never_leave_a_row_with_an_image_not_its_own(pie, tmp_path, seeds):
    """Two processes start into the same new folder at the same moment: with other settings exactly
    one claims it and the other is refused before its first item; with the same settings both finish.
    Every row's image is its own (its digest), and reading the folder checks that."""
    import multiprocessing as mp

    out = tmp_path / "run"
    outcome = _race(pie, out, seeds, mp.get_context("fork").Barrier(2))
    refused = [seed for seed, what in outcome.items() if what != "ok"]
    if seeds[0] != seeds[1]:
        assert len(refused) == 1 and "is the folder of another run" in outcome[refused[0]], outcome
    else:
        assert not refused, outcome
    winner = json.loads((out / "run.json").read_text())["settings"]["seed"]
    table_rows = R.rows(out)  # checks every row's image against its digest
    assert len(table_rows) == 4 and {r["settings"]["seed"] for r in table_rows} == {winner}
    for row in table_rows:
        image = (out / "images" / f"{row['id']}.png").read_bytes()
        assert row["image_sha256"] == __import__("hashlib").sha256(image).hexdigest()


def test_a_row_whose_image_was_replaced_or_deleted_is_refused_by_table_and_rescore(pie, tmp_path):
    out = tmp_path / "run"
    _run("robust-seeded", pie, out, seed=0, limit=2)
    first, second = sorted((out / "images").glob("*.png"))
    from PIL import Image

    own = first.read_bytes()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(first)  # another run's image in this row's place
    with pytest.raises(ValueError, match=f"the image of item {first.stem} .* is not the one its row was computed from"):
        R.summarize(out)
    first.write_bytes(own)
    second.unlink()  # rescore refuses before it rewrites any row: all or nothing
    with pytest.raises(ValueError, match=f"item {second.stem} .* has a row but no image"):
        R.rescore(out, data=pie)
    (out / "rows" / f"{first.stem}.json").write_text('{"id": "x", "cut')  # a full disk
    with pytest.raises(ValueError, match=f"{first.stem}.json is not a complete row"):
        R.rows(out)


def test_non_finite_options_are_refused_before_run_json_or_any_item(pie, tmp_path):
    CALLS.clear()
    with pytest.raises(ValueError, match=r"option\(s\) \['gain'\] of 'robust-identity' must be finite numbers; got gain=nan"):
        _run("robust-identity", pie, tmp_path / "run", options={"gain": float("nan")})
    assert not CALLS and not (tmp_path / "run" / "run.json").exists()


def test_types_that_match_no_item_are_refused(own_pie, tmp_path):
    with pytest.raises(ValueError, match=r"no item of .* has editing type \['9'\]; its types are"):
        _run("robust-identity", own_pie, tmp_path / "run", types=["9"], limit=None)
    assert not (tmp_path / "run" / "run.json").exists()


@pytest.mark.parametrize("bad_id", ["../escaped", "a/b", ".hidden", "..", ""])
def test_item_ids_must_be_plain_file_names(own_pie, bad_id):
    def rename(entries):
        key = sorted(entries)[0]
        entries[bad_id] = entries.pop(key)
    _edit_mapping(own_pie, rename)
    with pytest.raises(ValueError, match="is not a plain file name"):
        D.load_pie_bench(own_pie)


def test_duplicate_item_ids_are_refused(own_pie):
    mapping = own_pie / "mapping_file.json"
    text = mapping.read_text()
    entries = json.loads(text)
    key = sorted(entries)[0]
    twice = text.rstrip().rstrip("}") + f", {json.dumps(key)}: {json.dumps(entries[key])}}}"
    mapping.write_text(twice)
    with pytest.raises(ValueError, match=rf"mapping_file.json: the key\(s\) \['{key}'\] appear more than once"):
        D.load_pie_bench(own_pie)


@pytest.mark.parametrize("runs, message", [([0, 10 ** 7], "longer than"), ([10 ** 7, 3], "starts past"),
                                           ([1, 2, 3], "pairs")])
def test_masks_that_cannot_belong_to_their_image_name_the_item(own_pie, runs, message):
    def corrupt(entries):
        entries[sorted(entries)[0]]["mask"] = runs
    _edit_mapping(own_pie, corrupt)
    with pytest.raises(ValueError, match=rf"item 100000 of .*mapping_file.json: its mask: .*({message})"):
        D.load_pie_bench(own_pie)


def test_a_run_spilling_over_the_end_is_clipped_as_the_official_script_does():
    mask = D.mask_decode([27, 20], (6, 6))  # pixels 27..35 of 36; the other 11 of the run dropped
    assert mask[4, 3] and mask[4, 4] and mask.sum() == 20 + 2  # the 20-pixel frame + the run's 2 inner pixels


@R.register("robust-slow-load", needs=("target_prompt",))
def _slow_load(ctx, item, generator, steps):
    """Loads a 'model' that takes 0.5 s the first time (through the context), then edits at once."""
    import time

    if not hasattr(ctx, "_loaded"):
        start = time.perf_counter()
        time.sleep(0.5)
        ctx._loaded = True
        ctx.load_seconds += time.perf_counter() - start
    return item.image


def test_seconds_per_item_count_the_edit_not_the_first_model_load(pie, tmp_path):
    summary = _run("robust-slow-load", pie, tmp_path / "run", limit=2)
    assert summary["load_seconds_this_run"] >= 0.5
    assert all(r["seconds"] < 0.3 for r in R.rows(tmp_path / "run")), [r["seconds"] for r in R.rows(tmp_path / "run")]


def test_context_counts_the_time_spent_in_model_loads(monkeypatch):
    import time

    ctx = R.Context()
    monkeypatch.setattr(ctx.rt, "load", lambda name: time.sleep(0.2) or name)
    assert ctx.model("sd") == "sd" and ctx.load_seconds >= 0.2


def test_a_data_file_and_a_folder_without_rows_get_messages_that_say_what_to_pass(pie, tmp_path):
    with pytest.raises(ValueError, match=r"is a file; the benchmark is the FOLDER .*: pass "):
        D.load_pie_bench(pie / "mapping_file.json")
    (tmp_path / "empty" / "rows").mkdir(parents=True)
    with pytest.raises(ValueError, match="holds no benchmark results"):
        R.table([tmp_path / "empty"])
