"""The sd15 code path, offline: every public method on the sd15-shaped profile (SD 1.5's and
InstructPix2Pix's architectures with random weights; the pictures are noise, so these tests check
shapes, devices and that nothing assumes the toy geometry), and the real CLIP tokenizer."""
from __future__ import annotations

import json
import numpy as np
import pytest
import torch

import editnb
from editnb import clip_bpe, diffusion, metrics, sd15_shaped
from editnb.images import model_resolution, sample_photos

PROFILE = "sd15-shaped"
STEPS = 3  # SDEdit and iEdit need 2 denoising steps at strength 0.7: round(0.7 * 3)


# ------------------------------------------------------------------ the tokenizer


def test_clip_tokenizer_gives_clips_ids():
    tok = clip_bpe.clip_tokenizer()
    assert len(tok) == clip_bpe.VOCAB_SIZE == 49408
    # ids of openai/clip-vit-large-patch14's tokenizer (SD 1.5's)
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tok("An astronaut riding a horse").input_ids == [49406, 550, 18376, 6765, 320, 4558, 49407]
    padded = tok("a cat", padding="max_length", max_length=tok.model_max_length).input_ids
    assert len(padded) == 77 and padded[3:] == [49407] * 74
    merges, vocab = clip_bpe.merges_and_vocab()
    assert len(merges) == 48894 and vocab["<|startoftext|>"] == 49406 and vocab["a</w>"] == 320


def test_profile_is_selected_by_setup_and_environment(monkeypatch):
    rt = editnb.setup(profile=PROFILE, verbose=False)
    assert rt.profile == PROFILE and rt.steps(20) == 3 and rt.steps(2) == 2
    assert rt.samples(24) == 4 and rt.samples(3) == 3  # a cap, never more items than asked
    monkeypatch.setenv("EDITNB_PROFILE", PROFILE)
    rt = editnb.setup(verbose=False)
    assert rt.profile == PROFILE
    toy = editnb.setup(profile="toy", verbose=False)
    assert toy.steps(20) == 20 and toy.samples(24) == 24
    for bad in (0, -3, 2.5, "4"):
        with pytest.raises(ValueError, match="samples takes a positive number of items"):
            toy.samples(bad)


# ------------------------------------------------------------------ the architectures


@pytest.fixture(scope="module")
def rt():
    import warnings

    from editnb import runtime

    saved = runtime._CURRENT
    with warnings.catch_warnings():  # the suite sets EDITNB_PROFILE=toy; this module asks for sd15-shaped
        warnings.simplefilter("ignore")
        out = editnb.setup(profile=PROFILE, device="cpu", verbose=False)
    yield out
    runtime._CURRENT = saved


@pytest.fixture(scope="module")
def sd(rt):
    return rt.load("sd")


@pytest.fixture(scope="module")
def ip2p(rt):
    return rt.load("ip2p")


@pytest.fixture(scope="module")
def photos():
    return sample_photos()


def test_sd15_architecture(sd, ip2p):
    full = sd15_shaped.unet_config(full_width=True, sample_size=64)
    assert full["block_out_channels"] == (320, 640, 1280, 1280)
    for pipe, channels in ((sd, 4), (ip2p, 8)):
        c = pipe.unet.config
        assert c.in_channels == channels and c.cross_attention_dim == 768 and c.layers_per_block == 2
        assert list(c.down_block_types) == ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]
        assert list(c.up_block_types) == ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3
        heads = {m.heads for n, m in pipe.unet.named_modules() if n.endswith(("attn1", "attn2"))}
        assert heads == {8}
        assert len(pipe.unet.attn_processors) == 32  # 16 transformer blocks x (self, cross): SD 1.5's count
        assert pipe.text_encoder.config.hidden_size == 768 and pipe.tokenizer.model_max_length == 77
        assert 2 ** (len(pipe.vae.config.block_out_channels) - 1) == 8
        assert model_resolution(pipe) == 8 * sd15_shaped.SAMPLE_SIZE
    assert type(sd.scheduler).__name__ == "PNDMScheduler"


def test_iedit_has_no_stand_in(rt):
    with pytest.raises(RuntimeError, match="no public sd15 weights"):
        rt.load("iedit")


# ------------------------------------------------------------------ every method runs


def _size(pipe):
    r = model_resolution(pipe)
    return (r, r)


def test_sampling_and_inversion(rt, sd, photos):
    g = rt.generator(0)
    out = diffusion.text_to_image(sd, ["a photo of a cat", "a dog"], steps=STEPS, generator=g)
    assert [im.size for im in out.images] == [_size(sd)] * 2
    assert out.latents.shape == (2, 4, sd15_shaped.SAMPLE_SIZE, sd15_shaped.SAMPLE_SIZE)
    traj = diffusion.ddim_invert(sd, photos["coffee"], "a cup of coffee", steps=STEPS)
    assert len(traj) == STEPS + 1
    rec = diffusion.reconstruct(sd, traj, "a cup of coffee", direct=True)
    assert rec.image.size == _size(sd)


def test_attention_store_on_sd15_levels(rt, sd):
    from editnb.attention import AttentionStore, attach

    store = AttentionStore()
    with attach(sd.unet, store):
        diffusion.text_to_image(sd, "a photo of a cat", steps=STEPS, generator=rt.generator(0))
    maps = store.aggregate(kind="cross", resolution=sd15_shaped.SAMPLE_SIZE // 2)
    assert maps.shape[-1] == 77


def test_iedit_masked_inference_with_clipseg_mask_of_a_non_square_photo(rt, sd, photos):
    from editnb.methods import iedit

    clipseg = rt.load("clipseg")
    photo = photos["coffee"]  # 600 x 400
    probs_mask = iedit.clipseg_masks(clipseg, [photo], ["a cup"], threshold=0.0)[0]
    assert probs_mask.shape == (photo.height, photo.width)
    res = iedit.edit(sd, photo, "a cup of tea", mask=probs_mask, strength=0.7, steps=STEPS, generator=rt.generator(0))
    assert res.masks["edit"].shape == _size(sd) and res.image.size == _size(sd)
    with pytest.raises(ValueError, match="the image's size"):
        iedit.edit(sd, photo, "a cup of tea", mask=np.ones((10, 10), bool), steps=STEPS)


def test_iedit_fine_tuning_step(rt, sd, photos):
    """One step of the SD 1.5 loop (Eq. 12) on the real architecture: the trained groups change."""
    from editnb.features import ClipFeatures
    from editnb.images import pil_to_tensor
    from editnb.methods import iedit
    from editnb.models import tokenize

    clip = ClipFeatures(*rt.load("clip-b32"))
    unet = sd15_shaped.unet(sample_size=sd15_shaped.SAMPLE_SIZE)
    inp, mid = iedit.trainable_groups(unet)
    res = model_resolution(sd)
    x1 = pil_to_tensor(photos["chelsea"], res)
    x2 = pil_to_tensor(photos["coffee"], res)
    m = torch.zeros(1, 1, res, res)
    m[..., res // 4:, res // 4:] = 1
    prompts = ["a photo of a dog"]
    with torch.no_grad():
        text = sd.text_encoder(tokenize(sd.tokenizer, prompts)).last_hidden_state
    before = mid[0].detach().clone()
    opt = torch.optim.SGD(mid, lr=1e-2)
    terms = iedit.objective(unet, sd.vae, sd.scheduler, clip, text, prompts, ["dog"], x1, x2, m, m,
                            generator=torch.Generator().manual_seed(0))
    terms.total.backward()
    opt.step()
    assert torch.isfinite(terms.total) and not torch.equal(before, mid[0])


def test_ip_adapter_conditioning(rt, photos):
    pipe = rt.load("ip-adapter")
    embeds = pipe.prepare_ip_adapter_image_embeds(photos["astronaut"], None, pipe._execution_device, 1, False)
    out = diffusion.text_to_image(pipe, "a photo", steps=STEPS, generator=rt.generator(0), image_embeds=embeds)
    assert out.image.size == _size(pipe)


def test_metrics_on_real_shaped_feature_networks(rt, photos):
    a, b = photos["chelsea"], photos["coffee"]
    for name in ("clip", "clip-b32"):
        feats = metrics.clip_features(name)
        assert feats.name == name
        assert metrics.clip_score(feats, [a, b], ["a cat", "coffee"]).shape == (2,)
        assert np.isfinite(metrics.clip_directional_similarity(feats, [a], [b], ["a cat"], ["coffee"])).all()
    dino, proc = rt.load("dino")
    assert metrics.structure_distance(metrics.dino_keys(dino, proc), a, a) == pytest.approx(0.0, abs=1e-6)
    assert metrics.structure_distance(metrics.dino_keys(dino, proc), a, b) > 0
    model, _ = rt.load("editclip")
    assert model.config.vision_config.num_channels == 6


def test_registered_methods_run_on_a_bench_item(rt):
    from editnb.bench.data import load_pie_bench
    from editnb.bench.runner import Context
    from editnb.methods import METHODS, register_builtin
    from editnb.models import REGISTRY
    from editnb.runtime import data_dir

    register_builtin()
    item = next(i for i in load_pie_bench(data_dir() / "bench" / "toy-pie") if i.blend_words and i.instruction)
    ctx = Context()
    ran = []
    for name, method in sorted(METHODS.items()):
        if not method.models:  # a stand-in registered by another test of the session
            continue
        if not all(REGISTRY[m].sd15 for m in method.models):
            # no public weights (iEdit, EditCLIP's editor): the sd15 chapter runs what can run (tests above)
            with pytest.raises(RuntimeError, match="no public sd15 weights"):
                method.run(ctx, item, rt.generator(0), STEPS)
            continue
        out = method.run(ctx, item, rt.generator(0), STEPS)
        assert out.size == _size(ctx.model(method.models[0])), name
        ran.append(name)
    assert {"sdedit", "p2p", "ip2p", "lime"} <= set(ran)  # P2P with local blend, LIME with its localisation


# ------------------------------------------------------------------ real vocabulary (iEdit's edit prompts)


def test_caption_roles_keep_adjectives_with_noun_senses_and_skip_stop_words():
    from editnb.methods.iedit.masks import caption_roles, difference_prompts

    assert caption_roles("a red car on a small street".split()) == [None, "a", "n", None, None, "a", "n"]
    assert difference_prompts("a red car on a street", "a blue car on a street") == ("red car", "blue car")
    assert difference_prompts("a cat on a sofa", "a dog on a sofa") == ("cat", "dog")


def test_wordnet_prompts_say_how_to_get_wordnet():
    from editnb.methods import iedit

    try:
        from nltk.corpus import wordnet

        wordnet.ensure_loaded()
        pytest.skip("WordNet is installed here")
    except (ImportError, LookupError):
        pass
    with pytest.raises(RuntimeError, match=r"nltk.download\('wordnet'\)"):
        iedit.wordnet_edit_prompt("a red car", np.random.default_rng(0))


class _Synset:
    """A synset of the tiny WordNet below: lemmas, antonyms, hypernyms/hyponyms, similar_tos."""

    def __init__(self, name, antonym=None):
        self.name, self.antonym, self.hyper, self.hypo, self.similar = name, antonym, [], [], []

    def lemmas(self):
        syn = self
        lemma = type("Lemma", (), {"name": lambda _: syn.name,
                                   "antonyms": lambda _: [_Synset(syn.antonym).lemmas()[0]] if syn.antonym else []})
        return [lemma()]

    def hypernyms(self):
        return self.hyper

    def hyponyms(self):
        return self.hypo

    def similar_tos(self):
        return self.similar


def _tiny_wordnet():
    """nltk's wordnet interface over a handful of words: "small" has the antonym "large"; "red" has
    none but siblings under the head adjective "chromatic"; "car" has co-hyponyms under "vehicle";
    "red" is also a noun (the colour) and "on" is nothing, so a wrong role or a stop word shows."""
    import types

    adj = {"small": [_Synset("small", antonym="large")], "red": [_Synset("red")]}
    chromatic = _Synset("chromatic")
    chromatic.similar = [adj["red"][0], _Synset("blue"), _Synset("green")]
    adj["red"][0].similar = [chromatic]
    vehicle, car = _Synset("vehicle"), _Synset("car")
    car.hyper, vehicle.hypo = [vehicle], [car, _Synset("bus"), _Synset("truck")]
    colour, red_noun = _Synset("colour"), _Synset("red")
    red_noun.hyper, colour.hypo = [colour], [red_noun, _Synset("crimson")]
    nouns = {"car": [car], "red": [red_noun], "dog": []}
    wn = types.SimpleNamespace(ADJ="a", NOUN="n", ensure_loaded=lambda: None,
                               synsets=lambda w, pos: (adj if pos == "a" else nouns).get(w, []))
    corpus = types.ModuleType("nltk.corpus")
    corpus.wordnet = wn
    return corpus


def test_wordnet_prompts_change_one_content_word_in_its_role(monkeypatch):
    """The WordNet branch, on a tiny in-memory WordNet (no PyPI package ships its data): adjectives
    get an antonym or a sibling colour, nouns a co-hyponym, stop words are never touched."""
    import sys
    import types

    from editnb.methods import iedit

    monkeypatch.setitem(sys.modules, "nltk", types.ModuleType("nltk"))
    monkeypatch.setitem(sys.modules, "nltk.corpus", _tiny_wordnet())
    seen = set()
    for seed in range(40):
        p = iedit.wordnet_edit_prompt("a red car on the road", np.random.default_rng(seed))
        words, new_words = p.caption.split(), p.prompt.split()
        changed = [k for k, (a, b) in enumerate(zip(words, new_words)) if a != b]
        assert len(words) == len(new_words) and len(changed) == 1, p
        k = changed[0]
        assert words[k] in ("red", "car"), f"changed a stop word or an unknown word: {p}"
        if words[k] == "red":  # the adjective sense (a sibling colour), never the noun's sibling "crimson"
            assert new_words[k] in ("blue", "green") and p.relation == "co-hyponym", p
        else:
            assert new_words[k] in ("bus", "truck") and p.relation == "co-hyponym", p
        seen.add(words[k])
    assert seen == {"red", "car"}, "both content words should be drawn over 40 seeds"
    small = iedit.wordnet_edit_prompt("a small dog", np.random.default_rng(0))
    assert (small.prompt, small.relation) == ("a large dog", "antonym")
    with pytest.raises(ValueError, match="no adjective or noun"):
        iedit.wordnet_edit_prompt("a dog on the floor", np.random.default_rng(0))


# ------------------------------------------------------------------ the GPU memory benchmark, small


def test_memory_benchmark_runs_small_on_the_cpu(capsys, monkeypatch):
    import importlib.util
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parent.parent / "benchmarks"
    sys.path.insert(0, str(bench))
    try:
        spec = importlib.util.spec_from_file_location("sd15_memory", bench / "sd15_memory.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        measured = []  # every (seconds, peak MiB) the harness returned, in order

        def recording(fn, repeats, device, measure=module.harness.measure):
            measured.append(measure(fn, repeats, device))
            return measured[-1]

        monkeypatch.setattr(module.harness, "measure", recording)
        rows = module.main(["--device", "cpu", "--resolution", "64", "--steps", "3", "--dtype", "fp32"])
    finally:
        sys.path.remove(str(bench))
    assert [r[0] for r in rows] == ["01", "01", "02", "02", "03", "03", "06", "06", "02", "07"]
    assert all(np.isfinite(r[3]) and r[4] > 0 for r in rows)
    # each row shows its measurement's peak under the memory column and its seconds under the time column
    assert [(r[3], r[4]) for r in rows] == [(peak, secs) for secs, peak in measured]
    assert "| chapter | call | model CPU offload |" in capsys.readouterr().out


def test_stand_in_schedulers_do_not_clip_x0_as_sd15s_hub_config():
    """DDIM built from the stand-ins' scheduler configs must not clip the x0 estimate (SD 1.5's
    scheduler_config.json has "clip_sample": false); the saved folder keeps the key."""
    from editnb.diffusion import make_scheduler

    for kind in ("sd", "ip2p"):
        pipe = sd15_shaped.pipeline(kind)
        assert make_scheduler(pipe).config.clip_sample is False
    saved = json.loads((sd15_shaped.folder("sd") / "scheduler" / "scheduler_config.json").read_text())
    assert saved["clip_sample"] is False
