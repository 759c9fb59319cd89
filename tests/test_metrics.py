import math
from pathlib import Path

import numpy as np
import pytest
import torch

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


def test_every_metric_reads_a_soft_mask_as_the_mask_reader_does():
    """A probability map (0.05 outside, 0.95 inside) is the mask it thresholds to at 0.5: reading
    any value above 0 as "edit" made the whole image the edit, and the background PSNR infinite."""
    a, b = img(0), img(0)
    b[:8] = 255
    b[8:] = 20  # the background differs a little
    hard = np.zeros((16, 16), bool)
    hard[:8] = True
    soft = np.where(hard, 0.95, 0.05)
    for metric in (M.mse, M.psnr, M.l1, M.ssim):
        for region in ("background", "edit"):
            assert metric(a, b, soft, region) == pytest.approx(metric(a, b, hard, region)), (metric.__name__, region)
    assert M.psnr(a, b, soft, "background") == pytest.approx(10 * math.log10(1 / 0.5 / (20 / 255) ** 2))
    assert M.ssim_masked(a, b, soft) == pytest.approx(M.ssim_masked(a, b, hard), nan_ok=True)
    assert M.mask_iou(soft, hard) == 1.0
    with pytest.raises(ValueError, match=r"a float mask is in \[0, 1\]"):  # logits: refused, not read as a mask
        M.mse(a, b, soft * 10 - 5, "edit")


def test_list_metrics_refuse_lists_of_different_lengths_naming_them():
    class Features:  # never reached: the lengths are checked first
        def images(self, _):
            raise AssertionError("computed before checking")
        texts = images

    out, src, mask = img(0), img(9), np.ones((16, 16), bool)
    with pytest.raises(ValueError, match="images: 2, texts: 2, masks: 1"):
        M.clip_region_similarity(Features(), [out, src], ["t", "t"], [mask])
    with pytest.raises(ValueError, match="images: 2, texts: 1"):
        M.clip_similarity(Features(), [out, src], ["t"])
    with pytest.raises(ValueError, match="sources: 1, outputs: 2"):
        M.clip_instruction_similarity(Features(), [src], [out, out], ["t"])
    with pytest.raises(ValueError, match="images_a: 3, images_b: 2"):
        M.clip_image_similarity(Features(), np.zeros((3, 16, 16, 3), np.uint8), [out, src])


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
    # AP@2 divides by min(k, R) = 2: the hit at rank 1 (precision 1) over the two the top 2 could hold
    assert out["MAP@2"] == pytest.approx(0.5)
    late = M.retrieval_metrics(np.array([[0.9, 0.8, 0.1]]), np.array([[False, True, True]]), k=2)
    assert late["MAP@2"] == pytest.approx(0.25)  # its hit is at rank 2: precision 1/2, over 2
    one = M.retrieval_metrics(np.array([[0.9, 0.8, 0.1]]), np.array([[False, True, False]]), k=2)
    assert one["MAP@2"] == pytest.approx(0.5)  # one relevant item: min(k, R) = 1
    tied = M.retrieval_metrics(np.array([[0.5, 0.5, 0.5]]), np.array([[False, False, True]]), k=2)
    assert tied["MAP@2"] == 0 and tied["AUC"] == pytest.approx(1 / 3)  # ties keep the gallery's order
    assert out["ROC AUC"] == pytest.approx(0.75)  # pairs (rel, irrel): 0>1, 0>3, 2<1, 2>3
    # the supplement's AUC, the area under the precision-recall curve over the whole ranking: the
    # precision at each relevant item's rank (1 at rank 1, 2/3 at rank 3), averaged; MAP@2 stops at 2
    assert out["AUC"] == pytest.approx((1 + 2 / 3) / 2)
    assert late["AUC"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    perfect = M.retrieval_metrics(np.array([[1.0, 0.9, 0.1]]), np.array([[True, True, False]]), k=10)
    assert perfect == {"AUC": 1.0, "ROC AUC": 1.0, "MAP@10": 1.0, "Recall@10": 1.0,
                       "Precision@10": pytest.approx(2 / 10)}  # divides by k


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


def _reference_ssim_map(a, b, mode):
    """Wang et al.'s SSIM with a Gaussian window computed independently with scipy: sigma 1.5
    truncated at radius 5 (an 11x11 window), population variances, data range 1."""
    from scipy.ndimage import gaussian_filter

    x, y = a / 255.0, b / 255.0

    def blur(v):
        return np.stack([gaussian_filter(v[..., c], 1.5, truncate=3.5, mode=mode) for c in range(3)], -1)

    mx, my = blur(x), blur(y)
    vx, vy = np.maximum(blur(x * x) - mx ** 2, 0), np.maximum(blur(y * y) - my ** 2, 0)
    cxy = blur(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    return ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))


def test_ssim_is_the_gaussian_window_ssim_of_a_reference_and_of_torchmetrics():
    import torch
    from torchmetrics.functional.image import structural_similarity_index_measure

    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-60, 60, a.shape), 0, 255).astype(np.uint8)
    full = _reference_ssim_map(a, b, mode="mirror")  # scipy's "mirror" is torch's "reflect" padding
    assert np.allclose(M.ssim_map(a, b, border="reflect"), full, atol=1e-10)
    assert M.ssim(a, b, border="reflect") == pytest.approx(full.mean(), abs=1e-10)
    assert M.ssim(a, b) == pytest.approx(full[5:-5, 5:-5].mean(), abs=1e-10)  # "valid": the window fits
    unit = lambda v: torch.from_numpy(v.transpose(2, 0, 1))[None].double() / 255  # noqa: E731
    assert M.ssim(a, b, border="reflect") == pytest.approx(
        float(structural_similarity_index_measure(unit(b), unit(a), data_range=1.0)), abs=1e-10)
    # the old 7x7 uniform window gives another number: the setting matters
    from skimage.metrics import structural_similarity

    assert abs(structural_similarity(a, b, channel_axis=-1, data_range=255) - M.ssim(a, b)) > 1e-3
    with pytest.raises(ValueError, match="border"):
        M.ssim(a, b, border="same")
    with pytest.raises(ValueError, match="smaller than the 11x11"):
        M.ssim(a[:8, :8], b[:8, :8])


def test_ssim_masked_averages_the_reference_map_inside_and_outside():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    b = a.copy()
    b[8:20, 8:20] = 255 - b[8:20, 8:20]
    mask = np.zeros((32, 32), bool)
    mask[8:20, 8:20] = True
    ref = _reference_ssim_map(a, b, mode="mirror").mean(-1)
    assert M.ssim_masked(a, b, mask) == pytest.approx((ref[mask].mean(), ref[~mask].mean()), abs=1e-10)


class _FixedClip:
    """Features whose image/text embeddings are given: cosines known by construction."""

    name = "clip-b32"

    def __init__(self, image_vectors, text_vectors):
        import torch

        self._i, self._t = (torch.nn.functional.normalize(torch.tensor(v, dtype=torch.float32), dim=-1)
                            for v in (image_vectors, text_vectors))

    def images(self, images):
        return self._i[: len(images)]

    def texts(self, texts):
        return self._t[: len(texts)]


def test_clip_score_scales_pie_bench_vs_hessel():
    # cosines 0.26 (a typical SD-sized CLIP score), 1.0 and -0.5 (clipped to 0 by both scores)
    c = 0.26
    f = _FixedClip([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], [[c, (1 - c * c) ** 0.5], [0.0, 1.0], [-0.5, 0.75 ** 0.5]])
    assert M.clip_similarity(f, [0, 1, 2], ["a", "b", "c"]) == pytest.approx([0.26, 1.0, -0.5], abs=1e-6)
    assert M.clip_score(f, [0, 1, 2], ["a", "b", "c"]) == pytest.approx([26.0, 100.0, 0.0], abs=1e-4)
    # Hessel et al.: 2.5 * max(cos, 0), in percent as iEdit's Table 1 prints it (65 % for cos 0.26)
    assert M.clipscore_hessel(f, [0, 1, 2], ["a", "b", "c"]) == pytest.approx([65.0, 250.0, 0.0], abs=1e-4)


def test_magicbrush_metrics_use_clip_b32_and_a_dino_score(toy_features):
    import torch
    from transformers import ViTConfig, ViTModel

    from editnb.toy import world

    a = world.render(world.scene_for("test", 0))
    b = world.render(world.scene_for("test", 1))
    toy = M.magicbrush_metrics(toy_features, a, a, "a red circle")
    assert toy["toy-DINO"] == pytest.approx(1.0, abs=1e-5) and toy["L1"] == 0
    assert M.toy_dino_similarity(toy_features, [a], [b])[0] < 1 - 1e-4
    wrong = _FixedClip([[1.0, 0.0]], [[1.0, 0.0]])
    wrong.name = "clip"  # ViT-L/14 in sd15: not MagicBrush's CLIP
    with pytest.raises(ValueError, match="ViT-B/32"):
        M.magicbrush_metrics(wrong, a, b, "a red circle")
    torch.manual_seed(0)
    vit = ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                             image_size=224, patch_size=16), add_pooling_layer=False).eval()
    px = M._magicbrush_dino_pixels(np.zeros((60, 90, 3), np.uint8))  # shorter side 256, centre crop 224
    assert px.shape == (3, 224, 224) and px[0, 0, 0].item() == pytest.approx(-0.485 / 0.229, abs=1e-5)
    with torch.no_grad():
        cls = vit(pixel_values=torch.stack([M._magicbrush_dino_pixels(a)])).last_hidden_state[0, 0]
    assert torch.allclose(M.dino_embeddings(vit, [a])[0], cls / cls.norm(), atol=1e-6)
    assert M.dino_similarity(vit, [a, a], [a, b]) == pytest.approx([1.0, float(M.dino_similarity(vit, [a], [b])[0])])
    same = M.magicbrush_metrics(_FixedClip([[1.0, 0.0]] * 2, [[1.0, 0.0]]), a, a, "x", dino=vit)
    assert same["DINO"] == pytest.approx(1.0)


def test_squeeze_lpips_is_torchmetrics_lpips(monkeypatch):
    """PIE-Bench's LPIPS: our SqueezeNet LPIPS equals torchmetrics' own LPIPS computation (its
    ScalingLayer, normalisation, learned heads and averaging) on the same backbone weights;
    torchvision's wheels cannot be installed beside the tests' CPU torch, so torchmetrics is handed
    the backbone here."""
    import torch
    import torchmetrics.functional.image.lpips as tm

    torch.manual_seed(0)
    backbone = M.squeezenet11_features()
    monkeypatch.setattr(tm, "_get_tv_model_features", lambda net, pretrained=False: backbone)
    reference = tm._LPIPS(net="squeeze").eval()
    ours = M.SqueezeLPIPS(backbone=backbone.state_dict())
    x, y = torch.rand(2, 3, 3, 48, 48)
    with torch.no_grad():
        assert torch.allclose(ours(x, y), reference(x, y).flatten(), rtol=1e-5, atol=1e-7)
        assert torch.allclose(ours(x, x), torch.zeros(3), atol=1e-7)


def test_lpips_reads_the_hub_cache_and_fails_clearly_offline(monkeypatch, tmp_path):
    import torch
    from editnb.toy import world

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    monkeypatch.setattr(M, "_LPIPS_NET", [])
    a = world.render(world.scene_for("test", 0))
    b = world.render(world.scene_for("test", 1))
    with pytest.raises(RuntimeError, match=r"squeezenet1_1-b8a52dc0\.pth.*toy-LPIPS"):
        M.lpips(a, b)
    # torchvision's checkpoint layout ("features.*" plus the classifier) in the cache: it loads
    torch.manual_seed(0)
    net = M.squeezenet11_features()
    state = {f"features.{k}": v for k, v in net.state_dict().items()}
    state["classifier.1.weight"] = torch.zeros(1000, 512, 1, 1)
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(state, tmp_path / "hub" / "checkpoints" / "squeezenet1_1-b8a52dc0.pth")
    assert M.lpips(a, a) == pytest.approx(0, abs=1e-6)
    far, standard = M.lpips(a, b), M.lpips(a, b, inputs="standard")
    assert far > 0 and standard > 0 and far != pytest.approx(standard)
    with pytest.raises(ValueError, match="inputs is"):
        M.lpips(a, b, inputs="[0, 255]")


# ------------------------------------------------------------------ by hand, with embeddings of known geometry


class _KnownClip:
    """A CLIP stand-in: an image is a (1, 3) float array whose values are its embedding (not unit
    length on purpose), a text is looked up in a table."""

    def __init__(self, texts):
        self.table = texts

    def images(self, images):
        return torch.tensor(np.concatenate([np.asarray(im, np.float32).reshape(1, -1) for im in images]))

    def texts(self, texts):
        return torch.tensor(np.stack([self.table[t] for t in texts]), dtype=torch.float32)


def test_clip_direction_metrics_on_known_embeddings():
    """EditCLIP supplement Eq. 2-4 by hand.  Eq. 2 cos(F(I_q) - F(I_o), G(T_q) - G(T_o)): the image
    moving along the caption change scores 1, against it -1.  Eq. 3 (edit direction against the
    instruction), Eq. 4 cos(F(I_q) - F(I_o), F(I_i) - F(I_e))."""
    e0, e1, e2 = np.eye(3, dtype=np.float32)
    feats = _KnownClip({"red": e0, "blue": e0 + 2 * e1, "make it blue": e1, "make it big": e2})
    src, along, against, across = [e0], [e0 + 0.5 * e1], [e0 - 3 * e1], [e0 + e2]
    eq2 = lambda out: float(M.clip_directional_similarity(feats, src, out, ["red"], ["blue"])[0])  # noqa: E731
    assert eq2(along) == pytest.approx(1.0) and eq2(against) == pytest.approx(-1.0) and eq2(across) == pytest.approx(0.0)
    eq3 = lambda out, ins: float(M.clip_instruction_similarity(feats, src, out, [ins])[0])  # noqa: E731
    assert eq3(along, "make it blue") == pytest.approx(1.0) and eq3(against, "make it blue") == pytest.approx(-1.0)
    assert eq3(along, "make it big") == pytest.approx(0.0)
    s_vis = M.s_visual(feats, [e0, e0], [e0 + e1, e0 + e2], [e2, e2], [e2 + 4 * e1, e2 + 4 * e1])
    assert s_vis.tolist() == pytest.approx([1.0, 0.0])  # the exemplar moved along e1: the first query did too


def test_edit_encoder_metrics_normalise_each_embedding_not_the_batch():
    """EC2T cos(E(I_q, I_o), G(T)) per item, whatever the embeddings' lengths; EC2EC likewise."""
    enc = lambda a, b: torch.tensor(np.stack([np.asarray(y, np.float32) - np.asarray(x, np.float32)  # noqa: E731
                                              for x, y in zip(a, b)]))
    text = lambda ts: torch.tensor([[1.0, 0.0], [1.0, 5.0]])[[{"left": 0, "up": 1}[t] for t in ts]]  # noqa: E731
    q, o = [np.zeros(2), np.zeros(2)], [np.array([10.0, 0.0]), np.array([3.0, 3.0])]
    assert M.ec2t(enc, text, q, o, ["left", "up"]).tolist() == pytest.approx([1.0, 18 / np.sqrt(18 * 26)])
    assert M.ec2ec(enc, q, o, [np.zeros(2)] * 2, [np.array([0.0, 2.0])] * 2).tolist() == pytest.approx([0.0, np.sqrt(0.5)])


PAIRED = {  # metric -> (call with per-item arguments of n items, the names of those arguments)
    "clip_directional_similarity": (lambda f, n: M.clip_directional_similarity(f, *n), ("sources", "outputs", "source_captions", "target_captions")),
    "clip_instruction_similarity": (lambda f, n: M.clip_instruction_similarity(f, *n), ("sources", "outputs", "instructions")),
    "s_visual": (lambda f, n: M.s_visual(f, *n), ("queries", "outputs", "exemplar_inputs", "exemplar_edits")),
    "ec2t": (lambda f, n: M.ec2t(f, f, *n), ("queries", "outputs", "instructions")),
    "ec2ec": (lambda f, n: M.ec2ec(f, *n), ("queries", "outputs", "exemplar_inputs", "exemplar_edits")),
    "dino_similarity": (lambda f, n: M.dino_similarity(f, *n), ("images_a", "images_b")),
}


@pytest.mark.parametrize("metric", sorted(PAIRED))
def test_every_paired_argument_is_counted_before_any_model_runs(metric):
    call, names = PAIRED[metric]
    for short in range(len(names)):
        args = [[f"item {k}" for k in range(1 if j == short else 2)] for j in range(len(names))]
        with pytest.raises(ValueError, match=f"{names[short]}: 1"):
            call(None, args)  # no model: the count is checked first


def test_frechet_distance_refuses_what_has_no_covariance_and_takes_two_samples():
    x = np.array([[0.0, 1.0], [2.0, 3.0]])
    assert M.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)  # two samples are enough
    assert M.frechet_distance(x, x + [3.0, 4.0]) == pytest.approx(25.0, abs=1e-6)
    for a, b in ((np.zeros(4), np.zeros((4, 2))), (np.zeros((4, 2)), np.zeros(4)), (np.zeros((4, 2)), np.zeros((4, 3)))):
        with pytest.raises(ValueError, match="must be \\(n, d\\) with the same d"):
            M.frechet_distance(a, b)
    with pytest.raises(ValueError, match="at least 2 images"):
        M.frechet_distance(x[:1], x)


def test_elo_update_and_leaderboard_by_hand():
    """K = 32: from 1500 each, B's win moves 16 points; a tie between unequal ratings moves the
    weaker up; the board is sorted by rating (not by games) and refuses scores and winners that are
    no outcome."""
    assert M.elo_update(1500, 1500, 0) == (1484, 1516)
    weak, strong = M.elo_update(1400, 1600, 0.5)
    e = 1 / (1 + 10 ** (200 / 400))
    assert weak == pytest.approx(1400 + 32 * (0.5 - e)) and strong == pytest.approx(1600 - 32 * (0.5 - e))
    assert M.elo_update(1500, 1500, 1, k=10) == (1505, 1495)
    for bad in (2, -1, 0.3):
        with pytest.raises(ValueError, match="score must be 1 \\(A wins\\), 0 \\(B wins\\) or 0.5"):
            M.elo_update(1500, 1500, bad)
    with pytest.raises(ValueError, match="winner 'w' is neither 'x' nor 'y'"):
        M.elo_leaderboard([("x", "y", "w")])
    board = M.elo_leaderboard([("x", "y", "y"), ("y", "z", "y"), ("x", "z", "x"), ("z", "w", "z")], k=20)
    assert [n for n, _, _ in board] == sorted((n for n, _, _ in board), key=lambda n: -dict((m, r) for m, r, _ in board)[n])
    ratings = {n: r for n, r, _ in board}
    assert ratings["y"] == pytest.approx(1500 + 10 + 20 * (1 - 1 / (1 + 10 ** ((1500 - 1510) / 400))))  # k reached the update
    assert board[0][0] == "y" and board[-1][0] == "w" and dict((n, g) for n, _, g in board)["w"] == 1


def test_ssim_masked_of_an_empty_or_full_mask():
    """SSIM-M over no pixels is undefined (nan) and SSIM-M-bar is then the whole image's mean SSIM;
    a full mask the other way round."""
    gen = np.random.default_rng(0)
    a = gen.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + gen.integers(-30, 30, a.shape), 0, 255).astype(np.uint8)
    whole = float(M.ssim_map(*M._pair(a, b), border="reflect").mean())
    inside, outside = M.ssim_masked(a, b, np.zeros((32, 32), bool))
    assert np.isnan(inside) and outside == pytest.approx(whole)
    inside, outside = M.ssim_masked(a, b, np.ones((32, 32), bool))
    assert inside == pytest.approx(whole) and np.isnan(outside)


def test_squeezenet11_features_are_torchvisions_layer_for_layer():
    """SqueezeNet 1.1 (Iandola et al. 2016; torchvision's squeezenet1_1().features, whose ImageNet
    checkpoint LPIPS loads): the checkpoint's parameter names and shapes, written out, and the
    feature sizes of a 70x70 input by the conv/pool arithmetic (3x3 stride 2, then 3x3 stride 2
    max-pools that round up)."""
    net = M.squeezenet11_features()
    fires = {3: (64, 16, 64), 4: (128, 16, 64), 6: (128, 32, 128), 7: (256, 32, 128), 9: (256, 48, 192),
             10: (384, 48, 192), 11: (384, 64, 256), 12: (512, 64, 256)}
    want = {"0.weight": (64, 3, 3, 3), "0.bias": (64,)}
    for i, (inp, sq, ex) in fires.items():
        want |= {f"{i}.squeeze.weight": (sq, inp, 1, 1), f"{i}.squeeze.bias": (sq,),
                 f"{i}.expand1x1.weight": (ex, sq, 1, 1), f"{i}.expand1x1.bias": (ex,),
                 f"{i}.expand3x3.weight": (ex, sq, 3, 3), f"{i}.expand3x3.bias": (ex,)}
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == want
    sizes = []
    x = torch.zeros(1, 3, 70, 70)
    with torch.no_grad():
        for layer in net:
            x = layer(x)
            sizes.append((x.shape[1], x.shape[2]))
    # conv: (70 - 3) // 2 + 1 = 34; pools: ceil((34 - 3) / 2) + 1 = 17, ceil(14 / 2) + 1 = 8, ceil(5 / 2) + 1 = 4
    assert sizes == [(64, 34), (64, 34), (64, 17), (128, 17), (128, 17), (128, 8), (256, 8), (256, 8), (256, 4),
                     (384, 4), (384, 4), (512, 4), (512, 4)]


def test_squeezenet_weights_are_fetched_once_into_the_hub_cache(monkeypatch, tmp_path):
    """Online, the checkpoint is downloaded from torchvision's address into the torch hub cache
    (quietly), and only its feature extractor's weights are kept, named as the Sequential's."""
    net = M.squeezenet11_features()
    calls = []

    def download(url, dst, progress=True):
        calls.append((url, dst, progress))
        Path(dst).parent.mkdir(parents=True, exist_ok=True)
        torch.save({**{f"features.{k}": v for k, v in net.state_dict().items()},
                    "classifier.1.weight": torch.zeros(1000, 512, 1, 1)}, dst)

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    state = M._squeezenet11_weights()
    cached = tmp_path / "hub" / "checkpoints" / Path(M.SQUEEZENET_URL).name
    assert calls == [(M.SQUEEZENET_URL, str(cached), False)]
    assert M.SQUEEZENET_URL.startswith("https://download.pytorch.org/models/squeezenet1_1-")
    assert set(state) == set(net.state_dict()) and torch.equal(state["0.weight"], net.state_dict()["0.weight"])
    M._squeezenet11_weights()
    assert len(calls) == 1  # read from the cache the second time


def test_lpips_feeds_pie_benchs_unit_range_or_the_standard_range_and_toy_lpips_with_toy_features(monkeypatch, toy_features):
    """PIE-Bench's convention feeds [0, 1] (no normalize=True); inputs="standard" feeds 2x - 1, as
    LPIPS expects; with toy features the recipe is toy-LPIPS."""
    seen = []

    class Spy(torch.nn.Module):
        def forward(self, x, y):
            seen.append((x.clone(), y.clone()))
            return torch.zeros(1)

    monkeypatch.setattr(M, "_LPIPS_NET", [Spy()])
    a, b = img(0), img(255)
    M.lpips(a, b)
    M.lpips(a, b, inputs="standard")
    (x0, y0), (x1, y1) = seen
    assert (x0 == 0).all() and (y0 == 1).all()      # [0, 1]
    assert (x1 == -1).all() and (y1 == 1).all()     # [-1, 1]
    c = img(90)
    assert M.lpips(a, c, features=toy_features) == pytest.approx(M.toy_lpips(toy_features, a, c))
    assert M.lpips(a, c, features=toy_features) > 0


def test_magicbrush_dino_transform_by_hand():
    """MagicBrush's DINO preprocessing: shorter side to 256 (bicubic, the longer side scaled alike and
    truncated), centre crop 224 (offsets rounded), ImageNet mean and std: a grey image of value v
    becomes (v / 255 - mean) / std in every pixel, and a landscape image is cropped around its centre."""
    grey = np.full((100, 300, 3), 128, np.uint8)  # H 100, W 300: resized to 256 x 768
    x = M._magicbrush_dino_pixels(grey)
    assert x.shape == (3, 224, 224)
    want = (128 / 255 - np.array(M.IMAGENET_MEAN)) / np.array(M.IMAGENET_STD)
    assert np.allclose(x.mean((1, 2)).numpy(), want, atol=1e-5) and np.allclose(x.std((1, 2)).numpy(), 0, atol=1e-5)
    marked = np.zeros((100, 300, 3), np.uint8)
    marked[:, 150:] = 255  # the right half white: the crop [272, 496) of 768 columns straddles the middle at 384
    row = M._magicbrush_dino_pixels(marked)[0, 112].numpy()
    white = (1 - M.IMAGENET_MEAN[0]) / M.IMAGENET_STD[0]
    assert np.allclose(row[:100], -M.IMAGENET_MEAN[0] / M.IMAGENET_STD[0], atol=0.05)  # left of 384 - 272 = 112
    assert np.allclose(row[125:], white, atol=0.05)
    tall = np.zeros((300, 100, 3), np.uint8)
    tall[150:] = 255  # the lower half white, portrait: the rows are cropped around 384 as well
    col = M._magicbrush_dino_pixels(tall)[0, :, 112].numpy()
    assert np.allclose(col[:100], -M.IMAGENET_MEAN[0] / M.IMAGENET_STD[0], atol=0.05) and np.allclose(col[125:], white, atol=0.05)


def test_ssim_map_window_and_border_limits_are_exact():
    """The Gaussian window is any odd size >= 1 (1: SSIM from the pixel values themselves; 9 is allowed)
    with sigma > 0 (below 1 too); 'valid' needs the window to fit (an 11x11 image gives one value),
    'reflect' needs a side larger than the padding (6 pixels for window 11); refusals say why."""
    rng = np.random.default_rng(0)
    a, b = (rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(2))
    one = M.ssim_map(a, b, window=1, sigma=0.5)
    x, y = a / 255.0, b / 255.0
    c1 = 0.01 ** 2  # window 1: mu is the pixel and the (co)variances vanish, so SSIM = (2ab + C1) / (a^2 + b^2 + C1)
    np.testing.assert_allclose(one, (2 * x * y + c1) / (x ** 2 + y ** 2 + c1), rtol=1e-6, atol=1e-9)
    assert M.ssim_map(a, b, window=9).shape == (8, 8, 3)
    assert M.ssim_map(a[:11, :11], b[:11, :11]).shape == (1, 1, 3)
    assert M.ssim_map(a[:6, :6], b[:6, :6], border="reflect").shape == (6, 6, 3)
    for window, sigma in ((2, 1.5), (0, 1.5), (11, 0.0), (11, -1.0)):
        with pytest.raises(ValueError, match=rf"^the window is an odd size >= 1 and sigma > 0; got window={window}, sigma={sigma}$"):
            M.ssim_map(a, b, window=window, sigma=sigma)
    with pytest.raises(ValueError, match=r"^images of size \(10, 10\) are smaller than the 11x11 SSIM window; use border='reflect' or larger images$"):
        M.ssim_map(a[:10, :10], b[:10, :10])
    with pytest.raises(ValueError, match=r"^images of size \(5, 5\) are too small to mirror-pad by 5$"):
        M.ssim_map(a[:5, :5], b[:5, :5], border="reflect")


@pytest.mark.parametrize("pred, true, iou", [([[1, 1], [0, 0]], [[1, 0], [0, 0]], 0.5), ([[0, 0], [0, 0]], [[0, 0], [0, 0]], 1.0)])
def test_mask_iou_by_hand_and_two_empty_masks_agree_fully(pred, true, iou):
    assert M.mask_iou(np.array(pred, bool), np.array(true, bool)) == iou
    with pytest.raises(ValueError, match=r"^masks differ in shape: \(2, 2\) vs \(1, 2\)$"):
        M.mask_iou(np.array(pred, bool), np.array(true, bool)[:1])


def test_magicbrush_background_psnr_is_the_psnr_outside_the_mask_capped_at_100(toy_features):
    """MagicBrush's background preservation: with the source and the edit mask, PSNR (data range 1)
    between source and output over the unmasked pixels, the masked ones set to 0 in both (PIE-Bench's
    region convention), by hand; an untouched background gives inf, reported as 100 dB; without the
    source or the mask there is no such figure."""
    rng = np.random.default_rng(0)
    source = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    output = source.copy()
    mask = np.zeros((8, 8), bool)
    mask[:4] = True
    output[mask] = 0  # the edit: only inside the mask
    assert M.magicbrush_metrics(toy_features, output, source, "x", source=source, mask=mask)["BG PSNR"] == 100.0
    output[7, 7] = (source[7, 7].astype(int) + 40) % 256  # one background pixel changed
    keep = (~mask)[..., None]
    mse = (((source * keep).astype(float) - (output * keep).astype(float)) / 255) ** 2
    by_hand = 10 * np.log10(1 / mse.mean())
    got = M.magicbrush_metrics(toy_features, output, source, "x", source=source, mask=mask)
    assert got["BG PSNR"] == pytest.approx(by_hand, rel=1e-9)
    assert "BG PSNR" not in M.magicbrush_metrics(toy_features, output, source, "x", source=source)
    assert "BG PSNR" not in M.magicbrush_metrics(toy_features, output, source, "x", mask=mask)


def test_frechet_distance_falls_back_to_covariances_offset_by_1e_6_when_the_root_is_not_finite(monkeypatch):
    """The reference implementation's numerical safety: when sqrtm(S_a S_b) is not finite, the root is
    taken of (S_a + 1e-6 I)(S_b + 1e-6 I) instead; the rest of the formula is unchanged."""
    from scipy import linalg

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(20, 3)), rng.normal(1.0, 2.0, size=(30, 3))
    real_sqrtm = linalg.sqrtm
    calls = []

    def first_call_fails(m, disp=True):
        calls.append(m)
        if len(calls) == 1:
            return np.full_like(m, np.nan), 1.0
        return real_sqrtm(m) if disp else real_sqrtm(m, disp=False)

    monkeypatch.setattr(linalg, "sqrtm", first_call_fails)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    eps = np.eye(3) * 1e-6
    root = real_sqrtm((sa + eps) @ (sb + eps)).real
    expected = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(sa) + np.trace(sb) - 2 * np.trace(root)
    assert M.frechet_distance(a, b) == pytest.approx(expected, rel=1e-12)
    assert len(calls) == 2 and np.allclose(calls[1], (sa + eps) @ (sb + eps), rtol=0, atol=0)


def test_toy_lpips_by_hand_over_two_layers_of_tokens():
    """toy-LPIPS: per layer, unit-normalise each token's channels, squared difference summed over the
    channels, mean over the tokens; the layers' means summed."""
    import torch

    layers = {"a": [torch.tensor([[[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]]]), torch.tensor([[[1.0, 1.0], [2.0, 0.0], [0.0, 1.0]]])],
              "b": [torch.tensor([[[4.0, 3.0], [0.0, 1.0], [0.0, 5.0]]]), torch.tensor([[[1.0, -1.0], [2.0, 0.0], [1.0, 0.0]]])]}

    class Features:
        def hidden_states(self, images):
            return layers[images[0]]

    # layer 1: (0.6,0.8) vs (0.8,0.6): 0.08; (1,0) vs (0,1): 2; (0,1) vs (0,1): 0 -> mean 2.08 / 3
    # layer 2: (1,1)/sqrt2 vs (1,-1)/sqrt2: 2; equal: 0; (0,1) vs (1,0): 2 -> mean 4 / 3
    assert M.toy_lpips(Features(), "a", "b") == pytest.approx(2.08 / 3 + 4 / 3, rel=1e-6)


@pytest.mark.parametrize("named, counts", [({"image": np.zeros((4, 4, 3)), "caption": "x"}, None),
                                           ({"images": np.zeros((2, 4, 4, 3)), "captions": ["x", "y"]}, None),
                                           ({"image": np.zeros((4, 4, 3)), "captions": ["x", "y"]}, "image: 1, captions: 2"),
                                           ({"images": np.zeros((3, 4, 4, 3)), "captions": ("x",)}, "images: 3, captions: 1")])
def test_paired_arguments_count_a_batch_by_its_first_dimension_and_one_image_as_one(named, counts):
    if counts is None:
        M._same_length(**named)
    else:
        with pytest.raises(ValueError, match=rf"^these arguments pair item by item, so they need as many items each; got {counts}$"):
            M._same_length(**named)


def test_images_of_two_sizes_are_refused_naming_both_sizes():
    with pytest.raises(ValueError, match=r"^images differ in size: \(4, 4\) vs \(5, 4\); resize one with editnb.images.fit$"):
        M.l1(np.zeros((4, 4, 3), np.uint8), np.zeros((5, 4, 3), np.uint8))


@pytest.mark.parametrize("region", ["background", "edit"])
def test_l1_l2_and_ssim_read_only_their_region(region):
    """PIE-Bench's region convention by hand: both images multiplied by (1 - mask) for "background",
    by the mask for "edit", then the plain metric over the whole (partly zeroed) image."""
    rng = np.random.default_rng(1)
    a, b = (rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(2))
    mask = np.zeros((16, 16), bool)
    mask[:, :7] = True
    keep = (~mask if region == "background" else mask)[..., None]
    x, y = (a * keep) / 255.0, (b * keep) / 255.0
    assert M.l1(a, b, mask, region) == pytest.approx(np.abs(x - y).mean(), rel=1e-9)
    assert M.l2(a, b, mask, region) == pytest.approx(((x - y) ** 2).mean(), rel=1e-9)
    assert M.ssim(a, b, mask, region) == pytest.approx(M.ssim(a * keep, b * keep), rel=1e-12)
    assert M.l1(a, b, mask, region) != pytest.approx(M.l1(a, b))
