"""LIME's mechanics on a random-weight InstructPix2Pix pipeline of the toy architecture."""
import numpy as np
import pytest
import torch

from editnb.attention import attach
from editnb.attention.store import Controller
from editnb.methods import lime
from editnb.toy import world


def test_relevant_tokens_drop_stop_words_verbs_and_punctuation(random_ip2p):
    tok = random_ip2p.tokenizer
    positions, words = lime.relevant_tokens(tok, "make the circle blue, big")
    assert words == ["circle", "blue", "big"] and positions == [3, 4, 6]
    with pytest.raises(ValueError, match=r"^the instruction 'make it so again' has no content words \(only stop words, "
                                         r"verbs or punctuation\); say what to edit, e\.g\. 'make the circle blue'$"):
        lime.relevant_tokens(tok, "make it so again")


def test_eq3_suppresses_only_the_start_token_stop_words_and_padding(random_ip2p):
    """Sec. A.7.1: <start of text>, padding and stop words; the verb, the comma and the end-of-text
    token are not edit content (the RoI ignores them) but Eq. 3 leaves their attention alone."""
    tok = random_ip2p.tokenizer
    # positions: <start> 0, make 1, the 2, circle 3, blue 4, "," 5, big 6, <end> 7, padding 8..
    unrelated = lime.unrelated_tokens(tok, "make the circle blue, big")
    assert unrelated == [0, 2] + list(range(8, tok.model_max_length))
    reg = lime.LimeRegularizer(np.ones((16, 16), bool), tok, "make the circle blue, big", min_resolution=8)
    assert reg.unrelated == unrelated and reg.related == [3, 4, 6]
    kept = set(range(tok.model_max_length)) - set(unrelated)
    assert kept == {1, 3, 4, 5, 6, 7}  # verb, content words, punctuation, end of text
    # an empty instruction: <start> 0, <end> 1 (kept), padding from 2 on
    assert lime.unrelated_tokens(tok, "") == [0] + list(range(2, tok.model_max_length))


def test_regularisation_leaves_attention_outside_the_roi_bit_identical(random_ip2p):
    unet, tok = random_ip2p.unet, random_ip2p.tokenizer
    roi = np.zeros((16, 16), bool)
    roi[4:10, 4:10] = True
    reg = lime.LimeRegularizer(roi, tok, "make the circle blue", min_resolution=8)
    seen = {}

    class Spy(Controller):
        def __init__(self, inner=None):
            super().__init__()
            self.inner = inner

        def logit_bias(self, *a):
            return self.inner.logit_bias(*a) if self.inner else None

        def forward(self, probs, site):
            if site.kind == "cross" and site.resolution == 16 and site.step == 0:
                seen.setdefault(self.inner is not None, probs.clone())
            return probs

    x = torch.randn(3, 8, 16, 16, generator=torch.Generator().manual_seed(0))
    states = torch.randn(3, tok.model_max_length, 128, generator=torch.Generator().manual_seed(1))
    for inner in (None, reg):
        with attach(unet, Spy(inner)), torch.no_grad():
            unet(x, 500, encoder_hidden_states=states)
    plain, regular = seen[False], seen[True]
    inside = torch.from_numpy(roi).flatten()
    assert torch.equal(plain[:, ~inside], regular[:, ~inside])  # outside: bit-identical
    unrelated = torch.tensor(reg.unrelated)
    assert regular[:, inside][..., unrelated].max() == 0  # inside: unrelated tokens get nothing
    assert plain[:, inside][..., unrelated].min() > 0
    assert torch.allclose(regular.sum(-1), torch.ones_like(regular.sum(-1)), atol=1e-5)


def test_related_token_rewarding_makes_attention_uniform_over_them(random_ip2p):
    roi = np.ones((16, 16), bool)
    reg = lime.LimeRegularizer(roi, random_ip2p.tokenizer, "make the circle blue", mode="related", min_resolution=8)
    from editnb.attention.store import Site

    probs = torch.softmax(torch.randn(4, 256, random_ip2p.tokenizer.model_max_length), -1)
    out = reg.forward(probs, Site("x", "down", "cross", 16, 4, 0))
    assert torch.allclose(out[0, 0, [3, 4]], torch.tensor([0.5, 0.5]))


def test_related_mode_rewrites_only_the_roi_rows_of_its_branch_at_its_levels_and_steps(random_ip2p):
    """Eq. 4's limit, by hand: inside the RoI each query row becomes uniform over the related tokens
    (1/n each, 0 elsewhere); rows outside the RoI, rows of another branch, and sites outside the
    regulariser's levels or steps are returned bit-identical."""
    from editnb.attention.store import Site
    from editnb.layout import BatchLayout

    tok = random_ip2p.tokenizer
    keys = tok.model_max_length
    roi = np.zeros((16, 16), bool)
    roi[2:9, 5:14] = True
    inside = torch.from_numpy(roi).flatten()
    heads = 2
    probs = torch.softmax(torch.randn(3 * heads, 256, keys, generator=torch.Generator().manual_seed(0)), -1)
    reg = lime.LimeRegularizer(roi, tok, "make the circle blue", mode="related", min_resolution=16, step_range=(1, 4))
    related = reg.related
    want = torch.zeros(keys)
    want[related] = 1 / len(related)
    out = reg.forward(probs, Site("x", "up", "cross", 16, heads, 2))
    assert torch.equal(out[:, inside], want.expand_as(out[:, inside]))
    assert torch.equal(out[:, ~inside], probs[:, ~inside])
    for site in (Site("x", "up", "cross", 8, heads, 2), Site("x", "up", "cross", 16, heads, 0),
                 Site("x", "up", "cross", 16, heads, 4), Site("x", "up", "self", 16, heads, 2)):
        assert torch.equal(reg.forward(probs, site), probs), site  # below min_resolution, outside [1, 4), self-attention

    # in a dual-branch loop, the target rows only (both guidance branches), never the source's
    layout = BatchLayout(("uncond", "cond"), ("source", "target"))
    probs4 = torch.softmax(torch.randn(4 * heads, 256, keys, generator=torch.Generator().manual_seed(1)), -1)
    target = lime.LimeRegularizer(roi, tok, "make the circle blue", mode="related", min_resolution=16, branch="target")
    out = target.forward(probs4, Site("x", "up", "cross", 16, heads, 0, layout)).reshape(4, heads, 256, keys)
    before = probs4.reshape(4, heads, 256, keys)
    assert torch.equal(out[[0, 2]], before[[0, 2]])  # source rows, unconditional and conditional
    assert torch.equal(out[[1, 3]][:, :, inside], want.expand_as(out[[1, 3]][:, :, inside]))
    assert torch.equal(out[[1, 3]][:, :, ~inside], before[[1, 3]][:, :, ~inside])


def test_localise_and_edit_run_and_validate_input(random_ip2p):
    e = world.edit_for("test", 0, "recolor")
    loc = lime.localise(random_ip2p, e.source_image(), e.instruction, n_clusters=4, steps=3,
                        generator=torch.Generator().manual_seed(0))
    assert loc.segments.shape == (32, 32) and len(np.unique(loc.segments)) == 4
    assert set(loc.segments_by_resolution) == {8, 16}
    assert loc.roi.any() and loc.roi.sum() < loc.roi.size and loc.attention.max() == pytest.approx(1.0)
    feats = np.random.default_rng(0).normal(size=(200, 8))
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    n = [len(np.unique(lime.cluster(feats, method="agglomerative", distance_threshold=t))) for t in (0.05, 0.3, 0.6)]
    assert n[0] < n[1] < n[2]  # higher threshold, more clusters (Sec. A.7.2)
    out = lime.edit(random_ip2p, e.source_image(), e.instruction, mask=e.mask(), steps=3,
                    generator=torch.Generator().manual_seed(0))
    assert out.image.size == (64, 64) and out.found["localisation"] is None
    assert np.array_equal(out.masks["roi"], e.mask())
    with pytest.raises(ValueError, match="must be 64x64"):
        lime.edit(random_ip2p, e.source_image(), e.instruction, mask=np.ones((10, 10), bool), steps=2)
    with pytest.raises(ValueError, match="no content words"):
        lime.edit(random_ip2p, e.source_image(), "make it so", mask=e.mask(), steps=2)


def test_localisation_stops_after_its_feature_steps(random_ip2p):
    calls = []
    hook = random_ip2p.unet.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        e = world.edit_for("test", 1, "recolor")
        loc = lime.localise(random_ip2p, e.source_image(), e.instruction, n_clusters=3, steps=6, feature_steps=2,
                            generator=torch.Generator().manual_seed(0))
    finally:
        hook.remove()
    assert len(calls) == 2  # two UNet calls, then the pass stopped
    assert set(loc.segments_by_resolution) == {8, 16}  # clustered on demand from the kept features
    again = lime.recluster(loc, n_clusters=3)
    assert np.array_equal(again.segments, loc.segments)
    assert np.array_equal(again.roi, loc.roi) and again.chosen == loc.chosen


def test_a_whole_localisation_pass_runs_its_steps_and_decodes_no_image(random_ip2p):
    unet_calls, decodes = [], []
    hooks = [random_ip2p.unet.register_forward_pre_hook(lambda *a: unet_calls.append(1)),
             random_ip2p.vae.decoder.register_forward_pre_hook(lambda *a: decodes.append(1))]
    e = world.edit_for("test", 1, "recolor")
    try:
        lime.localise(random_ip2p, e.source_image(), e.instruction, n_clusters=3, steps=3,
                      generator=torch.Generator().manual_seed(0))
    finally:
        for h in hooks:
            h.remove()
    assert len(unet_calls) == 3 and decodes == []  # LIME needs the features, not the first pass's picture


def test_recluster_is_the_clustering_of_the_kept_features_and_its_roi(random_ip2p):
    """Re-clustering (Table 4's ablations) = clustering the kept features again, then the RoI is the
    cluster of the highest-attention pixel (top_clusters of them); the defaults are localise's:
    KMeans 8, one cluster, agglomerative threshold 0.5."""
    e = world.edit_for("test", 1, "recolor")
    loc = lime.localise(random_ip2p, e.source_image(), e.instruction, n_clusters=3, steps=3, feature_steps=2,
                        generator=torch.Generator().manual_seed(0))
    side = loc.segments.shape[0]
    five = lime.recluster(loc, n_clusters=5, seed=1)
    assert np.array_equal(five.segments, lime.cluster(loc.features, 5, seed=1).reshape(side, side))
    top = int(five.segments.ravel()[np.argmax(loc.attention.ravel())])
    assert five.chosen == [top] and np.array_equal(five.roi, five.segments == top)
    default = lime.recluster(loc)
    assert len(np.unique(default.segments)) == 8 and len(default.chosen) == 1
    two = lime.recluster(loc, n_clusters=5, seed=1, top_clusters=2)
    assert len(two.chosen) == 2 and np.array_equal(two.roi, np.isin(five.segments, two.chosen))
    agglomerative = lime.recluster(loc, clustering="agglomerative")
    assert np.array_equal(agglomerative.segments, lime.cluster(loc.features, method="agglomerative",
                                                               distance_threshold=0.5).reshape(side, side))


def _unet_of(sample_size, levels):
    from types import SimpleNamespace

    return SimpleNamespace(config=SimpleNamespace(sample_size=sample_size, block_out_channels=(1,) * levels))


def test_official_feature_and_roi_resolutions_are_read_from_the_unet():
    sd = _unet_of(64, 4)  # SD 1.5: 64/32/16/8
    assert lime._default_resolutions(sd) == [8, 16, 32]
    assert lime._default_roi_resolutions(sd) == [32, 16, 8]  # no 64x64 layers in the RoI's attention
    toy = _unet_of(16, 2)  # toy-ip2p: 16/8
    assert lime._default_resolutions(toy) == [16, 8] and lime._default_roi_resolutions(toy) == [8]


def test_localisation_concatenates_every_attention_output_per_layer(random_ip2p):
    """toy-ip2p's layers: at 16x16 three transformer blocks (self + cross: 6 outputs of 64 channels),
    at 8x8 four (8 outputs of 128): the official concatenation has 6*64 + 8*128 channels."""
    e = world.edit_for("test", 2, "recolor")
    kw = dict(n_clusters=3, steps=2, generator=torch.Generator().manual_seed(0))
    loc = lime.localise(random_ip2p, e.source_image(), e.instruction, **kw)
    assert loc.channels == {8: (0, 8 * 128), 16: (8 * 128, 8 * 128 + 6 * 64)}
    merged = lime.localise(random_ip2p, e.source_image(), e.instruction, feature_merge="mean", **kw)
    assert merged.channels == {8: (0, 128), 16: (128, 192)}
    assert np.allclose(np.linalg.norm(loc.features, axis=1), 1, atol=1e-5)
    with pytest.raises(ValueError, match="not levels of this UNet"):
        lime.localise(random_ip2p, e.source_image(), e.instruction, roi_resolutions=[32], **kw)
    with pytest.raises(ValueError, match="feature_merge"):
        lime.localise(random_ip2p, e.source_image(), e.instruction, feature_merge="sum", **kw)


def test_lime_in_p2p_regularises_the_target_branch_only(random_pipe):
    from editnb.attention.controller import Site
    from editnb.layout import BatchLayout
    from editnb.methods.p2p import prompt_to_prompt

    tok = random_pipe.tokenizer
    roi = np.zeros((16, 16), bool)
    roi[4:12, 4:12] = True
    reg = lime.LimeRegularizer(roi, tok, "a blue circle", min_resolution=8, branch="target")
    layout = BatchLayout(("uncond", "cond"), ("source", "target"))
    heads, keys = 2, tok.model_max_length
    bias = reg.logit_bias(Site("x", "up", "cross", 16, heads, 0, layout), 4 * heads, 256, keys, torch.float32, "cpu")
    assert bias.shape == (4, 1, 256, keys)
    assert (bias[[0, 2]] == 0).all()  # the source rows, unconditional and conditional
    inside = torch.from_numpy(roi).flatten()
    assert (bias[[1, 3]][:, 0][:, inside][..., reg.unrelated] == torch.finfo(torch.float32).min).all()
    assert (bias[[1, 3]][:, 0][:, ~inside] == 0).all()
    with pytest.raises(ValueError, match="batch layout of a dual-branch loop"):
        reg.logit_bias(Site("x", "up", "cross", 16, heads, 0, None), 4 * heads, 256, keys, torch.float32, "cpu")

    # end to end: the source branch is bit-identical to plain P2P's, the target is not
    kw = dict(cross_replace=0.0, self_replace=0.0, steps=3)
    plain = prompt_to_prompt(random_pipe, "a red circle", "a blue circle", generator=torch.Generator().manual_seed(0),
                             **kw)
    limed = lime.prompt_to_prompt(random_pipe, "a red circle", "a blue circle", roi, min_resolution=8,
                                  generator=torch.Generator().manual_seed(0), **kw)
    assert torch.equal(plain.latents[0], limed.latents[0])
    assert not torch.allclose(plain.latents[1], limed.latents[1], atol=1e-4)
    assert np.array_equal(limed.masks["roi"], roi)


def test_regulariser_acts_at_and_above_its_resolution_in_its_step_window(random_ip2p):
    """Sec. 4.2's schedule: cross-attention layers of resolution >= min_resolution, during steps
    [start, end): the first step of the window counts, the end does not."""
    from editnb.attention.store import Site

    roi = np.ones((16, 16), bool)
    reg = lime.LimeRegularizer(roi, random_ip2p.tokenizer, "make the circle blue", min_resolution=16, step_range=(2, 5))
    at = lambda res, step, kind="cross": reg.active(Site("x", "up", kind, res, 2, step))  # noqa: E731
    assert at(16, 2) and at(16, 4) and at(32, 3)
    assert not at(16, 1) and not at(16, 5) and not at(8, 3) and not at(16, 3, "self")
    every = lime.LimeRegularizer(roi, random_ip2p.tokenizer, "make the circle blue", min_resolution=16)
    assert every.active(Site("x", "up", "cross", 16, 2, 0)) and every.active(Site("x", "up", "cross", 16, 2, 999))


def test_roi_at_a_level_is_the_cells_it_covers_by_more_than_half_or_the_cells_a_thin_roi_touches(random_ip2p):
    tok = random_ip2p.tokenizer
    roi = np.zeros((16, 16), bool)
    roi[0:6, 0:8] = True  # 8x8 cells of 2x2 pixels: rows 0-2 fully covered, none half
    reg = lime.LimeRegularizer(roi, tok, "make the circle blue")
    want = np.zeros((8, 8), bool)
    want[0:3, 0:4] = True
    assert np.array_equal(reg.roi_at(8).reshape(8, 8).numpy(), want)
    assert np.array_equal(reg.roi_at(16).reshape(16, 16).numpy(), roi)  # its own size: itself
    up = reg.roi_at(32).reshape(32, 32).numpy()
    assert np.array_equal(up, np.kron(roi, np.ones((2, 2), bool)))  # a finer level: nearest, each pixel 2x2
    third = np.zeros((16, 16), bool)
    third[0:3, 0:3] = True  # 4x4 cells of 4x4 pixels: 9/16 of the first cell, the only one over half
    assert lime.LimeRegularizer(third, tok, "make the circle blue").roi_at(4).reshape(4, 4).numpy().sum() == 1
    line = np.zeros((16, 16), bool)
    line[5, :] = True  # one pixel thick: no 8x8 cell covered by half; the cells it touches instead, with a warning
    with pytest.warns(UserWarning, match="dilated to the 8 cell"):
        cells = lime.LimeRegularizer(line, tok, "make the circle blue").roi_at(8).reshape(8, 8).numpy()
    touched = np.zeros((8, 8), bool)
    touched[2, :] = True
    assert np.array_equal(cells, touched)


def test_regulariser_defaults_and_refusals(random_ip2p):
    """By default LIME regularises SD's 32x32 level and finer (the official code's resolutions above
    16); Eq. 4 mode biases no logits (it edits probabilities); bad modes and RoIs are refused."""
    from editnb.attention.store import Site

    tok = random_ip2p.tokenizer
    roi = np.ones((16, 16), bool)
    reg = lime.LimeRegularizer(roi, tok, "make the circle blue")
    assert reg.active(Site("x", "up", "cross", 32, 2, 0)) and not reg.active(Site("x", "up", "cross", 16, 2, 0))
    related = lime.LimeRegularizer(roi, tok, "make the circle blue", mode="related", min_resolution=8)
    assert related.logit_bias(Site("x", "up", "cross", 16, 2, 0), 2, 256, 77, torch.float32, "cpu") is None
    with pytest.raises(ValueError, match="mode must be 'unrelated' \\(the paper's choice\\) or 'related' \\(Eq. 4\\)"):
        lime.LimeRegularizer(roi, tok, "make the circle blue", mode="both")
    for bad in (np.ones((16, 8), bool), np.ones((2, 16, 16), bool)):
        with pytest.raises(ValueError, match="the RoI must be a square \\(H, W\\) mask"):
            lime.LimeRegularizer(bad, tok, "make the circle blue")
    with pytest.raises(ValueError, match="the RoI is empty: nothing would be edited"):
        lime.LimeRegularizer(np.zeros((16, 16), bool), tok, "make the circle blue")


def test_resolution_choices_by_hand_at_their_boundaries():
    """The feature levels are the official latent/8, /4, /2 as integer sides when at least two of them
    exist (a 3-level 64 UNet has only 32 and 16 of them: those two; a 2-level one only 32: all its
    levels); Eq. 3 regularises the upper half of the levels, latent / 2^(ceil(L/2) - 1)."""
    three = lime._default_resolutions(_unet_of(64, 3))  # 64/32/16
    assert three == [16, 32] and all(type(r) is int for r in three)
    assert lime._default_resolutions(_unet_of(64, 2)) == [64, 32]
    assert all(type(r) is int for r in lime._default_resolutions(_unet_of(64, 4)))
    for latent, levels, lowest in ((64, 4, 32), (16, 2, 16), (32, 3, 16), (64, 6, 16), (64, 1, 64)):
        got = lime.regularised_resolution(_unet_of(latent, levels))
        assert got == lowest and type(got) is int, (latent, levels, got)


def test_roi_at_keeps_the_cells_covered_more_than_half_and_repeats_cells_when_finer(random_ip2p):
    """A 4x4 RoI read at 2x2 (area average > 0.5: three quarters in, one quarter out), at 4x4 (itself)
    and at 8x8 (each cell repeated 2x2, nearest); a one-pixel RoI covers no 2x2 cell by half and is
    dilated to the cell it touches, with a warning that gives the RoI's size."""
    roi = np.zeros((4, 4), bool)
    roi[0:2, 0:2] = True  # top-left cell: all in
    roi[0:2, 2:4] = [[True, True], [True, False]]  # top-right: 3/4 in
    roi[2, 0] = True  # bottom-left: 1/4 in
    reg = lime.LimeRegularizer(roi, random_ip2p.tokenizer, "make the circle blue")
    assert reg.roi_at(2).tolist() == [True, True, False, False]
    assert reg.roi_at(4).tolist() == roi.flatten().tolist()
    assert reg.roi_at(8).reshape(8, 8).tolist() == np.kron(roi, np.ones((2, 2), bool)).tolist()
    dot = np.zeros((4, 4), bool)
    dot[3, 3] = True
    with pytest.warns(UserWarning, match=r"the RoI \(1 pixels of 4x4\) covers no 2x2 attention cell by half; it was "
                                         r"dilated to the 1 cell\(s\) it touches\. Draw a thicker mask"):
        cells = lime.LimeRegularizer(dot, random_ip2p.tokenizer, "make the circle blue").roi_at(2)
    assert cells.tolist() == [False, False, False, True]


def test_the_official_schedule_by_hand():
    """lime.ipynb runs 30 steps: the edit pass regularises apply_mask_range=[0, 26], both ends
    included (27 steps, the last 3 free), and the localisation keeps step 10; scaled to other
    step counts, rounding half up."""
    assert lime.official_edit_window(30) == (0, 27)
    assert lime.official_edit_window(20) == (0, 18)
    assert lime.official_edit_window(25) == (0, 23)  # 22.5
    assert lime.official_edit_window(1) == (0, 1)
    assert lime.official_localisation_step(30) == 10
    assert lime.official_localisation_step(20) == 7  # 6.67
    assert lime.official_localisation_step(6) == 2
    assert lime.official_localisation_step(1) == 0


def _active_steps(monkeypatch):
    seen = set()
    active = lime.LimeRegularizer.active

    def spy(self, site):
        on = active(self, site)
        if on:
            seen.add(site.step)
        return on

    monkeypatch.setattr(lime.LimeRegularizer, "active", spy)
    return seen


def test_edit_regularises_the_official_window_unless_told_otherwise(random_ip2p, monkeypatch):
    e = world.edit_for("test", 0, "recolor")
    run = lambda **kw: lime.edit(random_ip2p, e.source_image(), e.instruction, mask=e.mask(), min_resolution=8,  # noqa: E731
                                 generator=torch.Generator().manual_seed(0), **kw)
    seen = _active_steps(monkeypatch)
    run(steps=10)
    assert seen == set(range(9))  # 27/30 of 10 steps: 0-8, the last step free
    for window, steps, want in ((None, 4, {0, 1, 2, 3}), ((1, 3), 4, {1, 2})):
        seen.clear()
        run(steps=steps, step_range=window)
        assert seen == want
    for bad, message in (("every", "step_range is 'official'"), ((3, 1), r"needs 0 <= start < end, got \(3, 1\)")):
        with pytest.raises(ValueError, match=message):
            run(steps=4, step_range=bad)


def test_official_localisation_reads_one_step_and_stops_there(random_ip2p, monkeypatch):
    """reading="official": features and cross-attention of step official_localisation_step(steps)
    only (step 2 of 6), and the pass ends after it."""
    asked = set()
    wants = lime._FeatureCollector.wants

    def spy(self, site):
        needs = wants(self, site)
        if needs:
            asked.add(site.step)
        return needs

    monkeypatch.setattr(lime._FeatureCollector, "wants", spy)
    calls = []
    hook = random_ip2p.unet.register_forward_pre_hook(lambda *a: calls.append(1))
    e = world.edit_for("test", 1, "recolor")
    try:
        loc = lime.localise(random_ip2p, e.source_image(), e.instruction, n_clusters=3, steps=6, reading="official",
                            generator=torch.Generator().manual_seed(0))
    finally:
        hook.remove()
    assert asked == {2} and len(calls) == 3
    with pytest.raises(ValueError, match="reading is 'mean'"):
        lime.localise(random_ip2p, e.source_image(), e.instruction, reading="last")
    with pytest.raises(ValueError, match="feature_steps applies to reading='mean'"):
        lime.localise(random_ip2p, e.source_image(), e.instruction, reading="official", feature_steps=2)


def test_roi_iou_upsamples_the_roi_by_nearest_neighbour_and_compares_with_the_exact_mask(monkeypatch):
    """A 4x4 RoI against an 8x8 mask: each RoI cell covers 2x2 pixels.  RoI cells (0, 0) and (0, 1)
    -> pixels rows 0-1, columns 0-3 (8 px); the mask: rows 0-1, columns 2-5 (8 px); overlap 4 px,
    union 12: IoU 1/3.  The localisation options reach localise, seeded per edit."""
    from types import SimpleNamespace

    roi = np.zeros((4, 4), bool)
    roi[0, :2] = True
    mask = np.zeros((8, 8), bool)
    mask[0:2, 2:6] = True
    seen = []

    def fake_localise(pipe, image, instruction, generator=None, **options):
        seen.append((instruction, options, generator.initial_seed()))
        return SimpleNamespace(roi=roi)

    monkeypatch.setattr(lime, "localise", fake_localise)
    edit = SimpleNamespace(source_image=lambda: None, instruction="make the circle blue", mask=lambda: mask)
    assert lime.roi_ious(None, [edit, edit], seed=3, steps=5, reading="official") == pytest.approx([1 / 3, 1 / 3])
    assert seen == [("make the circle blue", {"steps": 5, "reading": "official"}, 3)] * 2
