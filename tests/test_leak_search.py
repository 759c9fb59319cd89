"""The leak search of chapter 03 (editnb.leak_search): strata, the leak-prone rule, the held-out
split and the leak cut, each by hand; no model runs here."""
import numpy as np
import pytest

from editnb import leak_search
from editnb.toy import world


def _obj(shape, color, cell):
    return world.ToyObject(shape, color, cell)


def test_neighbour_is_the_chebyshev_distance_to_the_nearest_other_object():
    circle, square = _obj("circle", "red", (0, 0)), _obj("square", "blue", (1, 1))
    scene = world.Scene((circle, square))
    assert leak_search.neighbour(world.recolor(scene, "circle", "green")) == "adjacent"  # diagonal touch
    far = world.Scene((circle, _obj("square", "blue", (2, 2))))
    assert leak_search.neighbour(world.recolor(far, "circle", "green")) == "apart"  # two cells away
    alone = world.Scene((circle,))
    assert leak_search.neighbour(world.recolor(alone, "circle", "green")) == "alone"
    # an added object counts from its new cell; a moved one from both of its cells
    assert leak_search.neighbour(world.add(far, _obj("triangle", "yellow", (2, 1)))) == "adjacent"
    assert leak_search.neighbour(world.move(far, "circle", (0, 2))) == "apart"
    assert leak_search.neighbour(world.move(far, "circle", (1, 2))) == "adjacent"
    assert leak_search.stratum(world.remove(scene, "square")) == "remove / adjacent"


def test_leak_prone_strata_are_those_at_factor_times_the_pool_mean_with_enough_edits():
    records = ([{"stratum": "recolor / adjacent", "leak": 6.0}] * 8 + [{"stratum": "move / apart", "leak": 1.0}] * 30
               + [{"stratum": "add / alone", "leak": 50.0}] * 2 + [{"stratum": "remove / adjacent", "leak": 4.0}] * 10)
    overall = (48 + 30 + 100 + 40) / 50  # 4.36
    table = leak_search.strata_table(records)
    assert table["recolor / adjacent"] == {"edits": 8, "mean leak": 6.0}
    # 6.0 >= 1.5 * 4.36 = 6.54? no; with factor 1.3 (5.67) yes; "add / alone" has too few edits either way
    assert leak_search.leak_prone(records, factor=1.5) == []
    assert leak_search.leak_prone(records, factor=1.3) == ["recolor / adjacent"]
    assert leak_search.leak_prone(records, factor=0.9) == ["recolor / adjacent", "remove / adjacent"]  # most leaking first
    assert leak_search.leak_prone(records, factor=1.3, min_edits=2) == ["add / alone", "recolor / adjacent"]
    assert overall == pytest.approx(4.36)
    with pytest.raises(ValueError, match="factor > 0"):
        leak_search.leak_prone(records, factor=0)


def test_the_split_draws_fresh_edits_of_the_strata_in_turn():
    strata = ["recolor / adjacent", "remove / apart"]
    edits = leak_search.split_edits(strata, 6, start=80_000)
    assert [leak_search.stratum(e) for e in edits] == strata * 3
    searched = {e.source for e in leak_search.pool(per_kind=20, start=60_000)}
    assert not searched & {e.source for e in edits}  # none of the search's scenes
    with pytest.raises(ValueError, match="no strata"):
        leak_search.split_edits([], 3)
    with pytest.raises(ValueError, match="kind / neighbour"):
        leak_search.split_edits(["recolor / near"], 3)


def test_scores_split_the_leak_between_the_roi_and_the_rest():
    e = world.recolor(world.Scene((_obj("circle", "red", (0, 0)), _obj("square", "blue", (2, 2)))), "circle", "green")
    source = e.source_image()
    image = source.astype(np.int16).copy()
    outside = ~e.mask()
    roi = np.zeros(outside.shape, bool)
    roi[:, :32] = True  # the left half
    a, b = outside & roi, outside & ~roi
    image[a] += 10  # 10 grey levels on every outside pixel of the left half, 30 on the right half
    image[b] += 30
    image = np.clip(image, 0, 255).astype(np.uint8)
    change = np.abs(image.astype(float) - source).mean(-1)
    s = leak_search._scores(image, e, roi)
    assert s["leak"] == pytest.approx(change[outside].mean())
    assert s["leak in RoI"] == pytest.approx(change[a].sum() / change[outside].sum())
    assert 0 < s["leak in RoI"] < 0.5 and not s["done"]  # the circle was not recoloured


def test_leak_cut_is_one_minus_the_ratio_of_mean_leaks_with_a_paired_interval():
    lime_rows = [{"leak": v, "done": d} for v, d in ((1.0, True), (2.0, True), (3.0, False), (2.0, True))]
    ip2p_rows = [{"leak": v, "done": d} for v, d in ((2.0, True), (4.0, False), (6.0, False), (4.0, True))]
    result = {"scores": {"LIME": lime_rows, "IP2P": ip2p_rows}}
    c = leak_search.leak_cut(result, "LIME", "IP2P")
    assert c["cut"] == pytest.approx(0.5) and c["success points"] == pytest.approx(25.0)
    assert c["low"] == pytest.approx(0.5) and c["high"] == pytest.approx(0.5)  # every edit halves: no spread
    summary = leak_search.summary({"scores": {"IP2P": [dict(r, **{"background PSNR": 30.0, "leak in RoI": 0.25})
                                                       for r in ip2p_rows]}})
    assert summary["IP2P"] == {"leak": 4.0, "done": 0.5, "background PSNR": 30.0, "leak in RoI": 0.25}


def test_the_neighbour_effect_compares_each_kind_adjacent_with_alone():
    records = ([{"stratum": "recolor / adjacent", "leak": 2.0}] * 8 + [{"stratum": "recolor / alone", "leak": 0.5}] * 8
               + [{"stratum": "reshape / adjacent", "leak": 1.5}] * 8 + [{"stratum": "reshape / alone", "leak": 1.0}] * 8
               + [{"stratum": "move / adjacent", "leak": 9.0}] * 3 + [{"stratum": "move / alone", "leak": 1.0}] * 8)
    # recolour: 2.0 >= 2 x 0.5; reshape: 1.5 < 2 x 1.0; move: too few adjacent edits
    assert leak_search.neighbour_effect(records) == ["recolor / adjacent"]
    assert leak_search.neighbour_effect(records, factor=1.5) == ["recolor / adjacent", "reshape / adjacent"]
    assert leak_search.neighbour_effect(records, min_edits=3) == ["recolor / adjacent", "move / adjacent"]
