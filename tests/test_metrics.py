import math

import numpy as np
import pytest

from editnb import metrics as M


def img(value, size=16):
    return np.full((size, size, 3), value, np.uint8)


def test_pixel_metrics_by_hand():
    a, b = img(0), img(51)  # 51/255 = 0.2
    assert M.l1(a, b) == pytest.approx(0.2)
    assert M.mse(a, b) == pytest.approx(0.04)
    assert M.l2(a, b) == pytest.approx(0.04)
    assert M.psnr(a, b) == pytest.approx(10 * math.log10(1 / 0.04))
    # identical images: PSNR inf, SSIM 1, errors 0
    assert M.psnr(a, a) == math.inf and M.ssim(b, b) == pytest.approx(1.0) and M.mse(a, a) == 0


def test_regions_follow_pie_bench():
    a, b = img(0), img(0)
    b[:8] = 255  # top half differs
    mask = np.zeros((16, 16), bool)
    mask[:8] = True
    assert M.mse(a, b, mask, "background") == 0  # everything that differs is masked out
    assert M.mse(a, b, mask, "edit") == pytest.approx(0.5)  # half the pixels, full difference
    with pytest.raises(ValueError, match="needs a mask"):
        M.mse(a, b, region="edit")
    with pytest.raises(ValueError, match="does not match"):
        M.mse(a, b, np.zeros((4, 4), bool), "edit")
    with pytest.raises(ValueError, match="differ in size"):
        M.mse(a, img(0, 8))


def test_ssim_masked_splits_the_ssim_map():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    b = a.copy()
    b[:, :16] = 255 - b[:, :16]
    mask = np.zeros((32, 32), bool)
    mask[:, :16] = True
    inside, outside = M.ssim_masked(a, b, mask)
    assert inside < 0.2 and outside > 0.7
    assert M.ssim_masked(a, a, mask) == pytest.approx((1.0, 1.0))


def test_mask_iou():
    p = np.zeros((4, 4), bool)
    p[:2] = True
    t = np.zeros((4, 4), bool)
    t[1:3] = True
    assert M.mask_iou(p, t) == pytest.approx(4 / 12)
    assert M.mask_iou(p, p) == 1.0


def test_frechet_distance_by_hand():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, 2))
    assert M.frechet_distance(x, x) == pytest.approx(0, abs=1e-6)
    # shifting the mean by (3, 4) adds |mu|^2 = 25, covariances equal
    assert M.frechet_distance(x, x + [3, 4]) == pytest.approx(25, abs=1e-6)
    # scaling a unit Gaussian by 2 in 2-D: Tr(I + 4I - 2*2I) = 2
    assert M.frechet_distance(x, 2 * x) == pytest.approx(2 * np.trace(np.cov(x, rowvar=False)) / 2, rel=0.05)


def test_retrieval_on_a_crafted_ranking():
    # one query, gallery of 4; relevant items are 0 and 2; the ranking puts 0 first, 2 third
    sim = np.array([[0.9, 0.8, 0.7, 0.1]])
    rel = np.array([[True, False, True, False]])
    out = M.retrieval_metrics(sim, rel, k=2)
    assert out["Precision@2"] == pytest.approx(0.5)
    assert out["Recall@2"] == pytest.approx(0.5)
    assert out["MAP@2"] == pytest.approx(1.0)  # the one hit in the top 2 is at rank 1
    late = M.retrieval_metrics(np.array([[0.9, 0.8, 0.1]]), np.array([[False, True, True]]), k=2)
    assert late["MAP@2"] == pytest.approx(0.5)  # its hit is at rank 2: precision 1/2
    assert out["AUC"] == pytest.approx(0.75)  # pairs (rel, irrel): 0>1, 0>3, 2<1, 2>3
    perfect = M.retrieval_metrics(np.array([[1.0, 0.9, 0.1]]), np.array([[True, True, False]]), k=10)
    assert perfect == {"AUC": 1.0, "MAP@10": 1.0, "Recall@10": 1.0, "Precision@10": pytest.approx(2 / 10)}  # divides by k


def test_elo():
    assert M.elo_expected(1500, 1500) == 0.5
    a, b = M.elo_update(1500, 1500, 1)
    assert (a, b) == (1516, 1484)
    board = M.elo_leaderboard([("x", "y", "x"), ("x", "z", "x"), ("y", "z", None), ("z", "x", "z")])
    assert [n for n, _, _ in board][0] == "x"
    assert sum(r for _, r, _ in board) == pytest.approx(3 * 1500)  # Elo is zero-sum
    assert dict((n, g) for n, _, g in board) == {"x": 3, "y": 2, "z": 3}
    with pytest.raises(ValueError):
        M.elo_leaderboard([("x", "y", "w")])


@pytest.fixture(scope="module")
def toy_features():
    return M.clip_features("clip", profile="toy")


def test_clip_space_metrics_with_toy_clip(toy_features):
    from editnb.toy import world

    f = toy_features
    assert f.name == "toy-clip"
    e = world.edit_for("test", 3, "recolor")
    src, dst = e.source_image(), e.edited_image()
    right, wrong = M.clip_similarity(f, [dst, dst], [e.target_caption, e.source_caption])
    assert right > wrong
    assert 0 <= M.clip_score(f, [dst], [e.target_caption])[0] <= 100
    # the edit's direction agrees with the captions' direction, the reverse edit's does not
    fwd = M.clip_directional_similarity(f, [src], [dst], [e.source_caption], [e.target_caption])[0]
    rev = M.clip_directional_similarity(f, [dst], [src], [e.source_caption], [e.target_caption])[0]
    assert fwd > 0 > rev and fwd == pytest.approx(-rev, abs=1e-5)
    assert M.clip_image_similarity(f, [src], [src])[0] == pytest.approx(1.0, abs=1e-5)
    # S_visual: an output that repeats the exemplar's edit scores 1
    assert M.s_visual(f, [src], [dst], [src], [dst])[0] == pytest.approx(1.0, abs=1e-5)
    assert M.clip_instruction_similarity(f, [src], [dst], [e.instruction]).shape == (1,)


def test_feature_metrics_vanish_on_identical_images(toy_features):
    from editnb.toy import world

    a = world.render(world.scene_for("test", 0))
    b = world.render(world.scene_for("test", 1))
    assert M.toy_lpips(toy_features, a, a) == pytest.approx(0, abs=1e-6)
    assert M.toy_lpips(toy_features, a, b) > 0.01
    keys = M.toy_keys(toy_features)
    assert M.structure_distance(keys, a, a) == pytest.approx(0, abs=1e-7)
    assert M.structure_distance(keys, a, b) > 0
    fid_same = M.toy_fid(toy_features, [world.render(world.scene_for("test", i)) for i in range(20)],
                         [world.render(world.scene_for("test", i)) for i in range(20)])
    assert fid_same == pytest.approx(0, abs=1e-3)


def test_edit_encoder_metrics():
    import torch

    enc = lambda a, b: torch.tensor([[1.0, 0.0]] * len(a))  # noqa: E731  every pair -> the same edit
    txt = lambda t: torch.tensor([[1.0, 1.0]] * len(t))  # noqa: E731
    assert M.ec2ec(enc, [0], [0], [0], [0])[0] == pytest.approx(1.0)
    assert M.ec2t(enc, txt, [0], [0], ["x"])[0] == pytest.approx(2 ** -0.5)
