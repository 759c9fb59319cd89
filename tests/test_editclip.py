"""EditCLIP: the 6-channel pair encoder, the same edit on other scenes, Eq. 5, retrieval metrics,
and behaviour of the shipped toy-editclip (retrieval) and toy-editclip-ip2p (exemplar transfer)."""
import io
import pickle
import time
from pathlib import Path
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from editnb import diffusion, models
from editnb.methods import editclip, get
from editnb.methods.editclip import figures, retrieval
from editnb.toy import world


@pytest.fixture(scope="module")
def toy_clip():
    from transformers import CLIPModel

    return CLIPModel.from_pretrained(str(models.models_dir() / "toy-clip"), dtype=torch.float32).eval()


def test_six_channel_patch_embedding_is_rgb_then_zeros(toy_clip):
    rgb = toy_clip.vision_model.embeddings.patch_embedding
    six = editclip.six_channel_patch_embedding(rgb)
    assert six.in_channels == 6
    assert torch.equal(six.weight[:, :3], rgb.weight) and not six.weight[:, 3:].any()
    with pytest.raises(ValueError, match="3 input channels"):
        editclip.six_channel_patch_embedding(six)


def test_pair_encoder_at_initialisation_is_clip_of_the_input_image(toy_clip):
    """Zeros on channels 3-5: whatever the edited image, the new encoder embeds the input as CLIP does."""
    pair = editclip.pair_encoder_from_clip(toy_clip).eval()
    assert pair.config.vision_config.num_channels == 6
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        want = toy_clip.get_image_features(pixel_values=x)
        got = pair.get_image_features(pixel_values=torch.cat([x, torch.rand(2, 3, 64, 64)], 1))
    want = want if isinstance(want, torch.Tensor) else want.pooler_output
    got = got if isinstance(got, torch.Tensor) else got.pooler_output
    assert torch.allclose(want, got, atol=1e-5)


@pytest.mark.parametrize("kind", world.EDIT_KINDS)
def test_same_edit_applies_one_instruction_to_another_scene(kind):
    e = world.edit_for("test", 7, kind)
    other = editclip.same_edit(e.instruction, "test", 7)
    assert other.instruction == e.instruction and other.kind == kind and other.source != e.source
    assert editclip.parse_instruction(e.instruction)[0] == kind


def test_parse_instruction_refuses_other_text():
    with pytest.raises(ValueError, match="not a ToyWorld instruction"):
        editclip.parse_instruction("make it look like a painting")


def test_guided_noise_is_instructpix2pix_guidance_with_the_edit_for_the_text():
    """Eq. 5 written out equals Conditioning.combine with E in place of the text states."""
    g = torch.Generator().manual_seed(0)
    eps = {k: torch.randn(1, 4, 8, 8, generator=g) for k in ("uncond", "image", "cond")}
    c = diffusion.Conditioning(torch.zeros(1, 3, 8), torch.zeros(1, 3, 8), 7.0, image_latents=torch.zeros(1, 4, 8, 8),
                               image_guidance=1.5)
    want = editclip.guided_noise(eps["uncond"], eps["image"], eps["cond"], s_E=7.0, s_I=1.5)
    assert torch.allclose(c.combine(eps, eps["cond"]), want, atol=1e-6)


def test_retrieval_metrics_on_a_hand_made_ranking():
    """Four pairs, two edits; by hand (k = 2).  Each query's one relevant pair ranks 2nd (a: c > b > d;
    d: b > c > a) or 3rd (b: c > d > a; c: b > a > d) of 3: AUC (precision at that rank) (1/2 + 1/3 +
    1/3 + 1/2) / 4 = 5/12, MAP@2 0.25, Recall@2 0.5, Precision@2 0.25, ROC AUC (0.5 + 0 + 0 + 0.5) / 4."""
    emb = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.8, 0.6], [0.0, 1.0]])
    table = retrieval.retrieval_table({"hand": emb}, [0, 0, 1, 1], k=2)["hand"]
    assert table == pytest.approx({"AUC": 5 / 12, "MAP@2": 0.25, "Recall@2": 0.5, "Precision@2": 0.25, "ROC AUC": 0.25})
    perfect = retrieval.retrieval_table({"p": torch.tensor([[1.0, 0], [1, 0.1], [0, 1], [0.1, 1]])}, [0, 0, 1, 1], k=2)["p"]
    assert perfect["MAP@2"] == 1 and perfect["AUC"] == 1


def test_tsne_runs_at_the_supplements_perplexity_50_with_pca_init():
    """The chapter's 120 points (60 quartets' two pairs) at perplexity 50 and PCA initialisation, as
    scikit-learn's TSNE gives them; a set too small for 50 runs at n - 1."""
    from sklearn.manifold import TSNE

    x = np.random.default_rng(1).normal(size=(120, 6))
    want = TSNE(n_components=2, perplexity=50.0, init="pca", random_state=0).fit_transform(x)
    assert np.allclose(figures.tsne_2d(x, seed=0), want)
    few = x[:12]
    assert np.allclose(figures.tsne_2d(few, seed=0),
                       TSNE(n_components=2, perplexity=11.0, init="pca", random_state=0).fit_transform(few))


def test_tsne_figure_is_identical_for_a_fixed_seed():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.random.default_rng(0).normal(size=(24, 8))
    kinds = list(world.EDIT_KINDS) * 2

    def png(seed):
        pts = figures.tsne_2d(x, seed=seed)
        fig, ax = plt.subplots()
        figures.plot_quartet_tsne(pts, kinds, ax=ax)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", metadata={"Software": None})
        plt.close(fig)
        return pts, buf.getvalue()

    (a, pa), (b, pb) = png(0), png(0)
    assert np.array_equal(a, b) and pa == pb


def test_editclip_is_registered_as_an_exemplar_method():
    m = get("editclip")
    assert m.needs == ("instruction",) and "editclip-ip2p" in m.models

    class Item:
        id, instruction = "6000001", "make the circle blue"

    ex_in, ex_ed = editclip.exemplar_for(Item())
    assert ex_in.shape == (64, 64, 3) and not np.array_equal(ex_in, ex_ed)
    Item.instruction = "make it look like a painting"
    with pytest.raises(ValueError, match="no exemplar pair"):
        editclip.exemplar_for(Item())


def test_sd15_editclip_offline_fails_fast_naming_the_hub_model(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "hub_file_cached", lambda repo, f: False)
    models.clear_cache()
    t = time.time()
    with pytest.raises(RuntimeError, match="QWW/EditCLIP"):
        models.load("editclip", profile="sd15", device="cpu")
    with pytest.raises(RuntimeError, match="QWW/EditCLIP-IP2P"):
        models.load("editclip-ip2p", profile="sd15", device="cpu")
    assert time.time() - t < 5


# ------------------------------------------------------------------ the shipped models


@pytest.fixture(scope="module")
def editor():
    return editclip.load_editor("toy", device="cpu", dtype=torch.float32)


def test_toy_editclip_retrieves_pairs_of_the_same_edit_better_than_clip_and_clip_dir(editor):
    """Held-out ToyWorld pairs (30 instructions x 5 scenes).  Measured MAP@10 on 40 x 5 (`editnb toy
    eval --only editclip`, AP@10 over min(10, R)): EditCLIP 0.998, CLIP-Dir 0.420, CLIP 0.099;
    asserted with margin."""
    from editnb.features import clip_features

    table = retrieval.toy_retrieval(editor.encoder, clip_features("clip", profile="toy"), groups=30)["table"]
    ours = table["EditCLIP"]["MAP@10"]
    assert ours > table["CLIP-Dir"]["MAP@10"] + 0.2 and ours > table["CLIP"]["MAP@10"] + 0.3, table


@pytest.mark.slow
def test_exemplar_editing_transfers_the_edit_kind_more_often_than_an_untrained_projection(editor):
    """48 held-out quartets (all six kinds), s_E = 7, s_I = 1.5, 10 steps, same seeds: how often the
    oracle reads the query's output as changed the way the exemplar's kind says.  Measured 0.31
    (trained projection) vs 0.23 (re-initialised projection), 15/48 vs 11/48 (at 15 steps: 0.29 vs
    0.23); asserted with a margin of two quartets."""
    from editnb.methods.editclip.toy_eval import kind_transferred, transfer, untrained

    qs = editclip.quartets(48, kinds=world.EDIT_KINDS)
    rate = lambda ims: np.mean([kind_transferred(im, q.query) for im, q in zip(ims, qs)])  # noqa: E731
    trained, control = rate(transfer(editor, qs, steps=10)), rate(transfer(untrained(editor), qs, steps=10))
    assert trained >= control + 2 / 48, (trained, control)


def test_toy_editor_is_the_shipped_one_and_the_control_is_nn_linears_default_draw(editor):
    """On toy the editor is the shipped pipeline and projection, loaded without a warning; the
    Table 1 control draws nn.Linear's default range from its seed and leaves the editor's
    projection alone."""
    import warnings

    from editnb.methods.editclip.toy_eval import untrained

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails
        again = editclip.load_editor("toy", device="cpu", dtype=torch.float32)
    shipped = editclip.load_projection(models.toy_path("editclip-ip2p"))
    assert again.pipe is editor.pipe
    assert all(torch.equal(a, b) for a, b in zip(again.projection.state_dict().values(), shipped.state_dict().values()))
    control = untrained(editor, seed=3)
    linear = control.projection[0]
    gen = torch.Generator().manual_seed(3)
    bound = linear.in_features ** -0.5
    for p in (linear.weight, linear.bias):
        assert torch.equal(p, torch.rand(p.shape, generator=gen) * 2 * bound - bound)
    assert torch.equal(control.projection[1].weight, torch.ones_like(control.projection[1].weight))
    assert not torch.equal(control.projection[0].weight, editor.projection[0].weight)
    assert torch.equal(editor.projection[0].weight, shipped[0].weight)


def test_table_1_leaves_out_the_oracle_columns_when_asked(editor):
    from editnb.features import clip_features
    from editnb.methods.editclip import toy_eval
    from editnb.methods.editclip.toy_eval import table_1

    qs = editclip.quartets(2, kinds=["recolor"])
    exact = {"exact": [q.query.edited_image() for q in qs]}
    features = clip_features("clip", profile="toy")
    full = table_1(exact, qs, editor.encoder, features)["exact"]
    assert full[toy_eval.SUCCESS] == 1.0 and full[toy_eval.KIND] == 1.0
    bare = table_1(exact, qs, editor.encoder, features, with_oracle=False)["exact"]
    assert set(full) - set(bare) == {toy_eval.SUCCESS, toy_eval.KIND}
    assert all(bare[k] == pytest.approx(full[k]) for k in bare)


def test_sd15_shaped_editor_is_the_released_layout_unet_and_image_proj_model_on_instruct_pix2pix():
    """On the sd15 code path the editor is QWW/EditCLIP-IP2P as the authors' evaluation loads it: the
    UNet of its unet/ folder on InstructPix2Pix's other parts, and image_proj_model.pt's proj
    (Linear) and norm (LayerNorm) applied to every last hidden state of the pair encoder.  Checked
    against the folder's own tensors in plain torch, and exemplar editing runs at the model's
    resolution."""
    from diffusers import UNet2DConditionModel

    from editnb import sd15_shaped
    from editnb.images import model_resolution

    kw = dict(profile="sd15-shaped", device="cpu", dtype=torch.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ed = editclip.load_editor(**kw)
    assert not [w for w in caught if "editnb" in w.filename], [str(w.message) for w in caught]  # a released editor
    folder = sd15_shaped.folder("editclip-ip2p")
    unet = UNet2DConditionModel.from_pretrained(str(folder), subfolder="unet", dtype=torch.float32)
    assert all(torch.equal(a, b) for a, b in zip(ed.pipe.unet.state_dict().values(), unet.state_dict().values()))
    base = models.load("ip2p", **kw)
    assert ed.pipe.unet is not base.unet
    assert all(torch.equal(a, b) for a, b in zip(ed.pipe.vae.state_dict().values(), base.vae.state_dict().values()))
    assert ed.pipe.unet.config.in_channels == 8
    official = {k: v.float() for k, v in torch.load(folder / "image_proj_model.pt", weights_only=True).items()}
    q = editclip.quartets(1)[0]
    h = ed.encoder.hidden_states([q.exemplar.source_image()], [q.exemplar.edited_image()])
    expect = F.layer_norm(h @ official["proj.weight"].T + official["proj.bias"], (official["norm.weight"].numel(),),
                          official["norm.weight"], official["norm.bias"])
    cond = ed.condition([q.exemplar.source_image()], [q.exemplar.edited_image()])
    assert cond.shape == (1, h.shape[1], 768) and torch.allclose(cond, expect, atol=1e-5)
    res = editclip.exemplar_edit(ed, q.query.source_image(), q.exemplar.source_image(), q.exemplar.edited_image(),
                                 steps=2, generator=torch.Generator().manual_seed(0))
    size = model_resolution(ed.pipe)
    assert np.asarray(res.image).shape == (size, size, 3) and size != q.query.source_image().shape[0]
    assert torch.equal(res.found["condition"], cond)


def test_editor_projection_files_are_read_as_written_and_foreign_ones_refused(tmp_path):
    """The official file maps proj -> the Linear and norm -> the LayerNorm (a swap would fail the
    shapes or the values); a file with other keys, a folder without a projection, and a projection
    whose widths do not join encoder and UNet are refused with what to do."""
    state = {"proj.weight": torch.arange(6.).reshape(3, 2), "proj.bias": torch.tensor([1., 2., 3.]),
             "norm.weight": torch.tensor([2., 2., 2.]), "norm.bias": torch.tensor([0., 1., 0.])}
    torch.save(state, tmp_path / "image_proj_model.pt")
    proj = editclip.load_projection(tmp_path)
    assert torch.equal(proj[0].weight, state["proj.weight"]) and torch.equal(proj[0].bias, state["proj.bias"])
    assert torch.equal(proj[1].weight, state["norm.weight"]) and torch.equal(proj[1].bias, state["norm.bias"])
    torch.save({"image_proj.proj.weight": torch.zeros(3, 2)}, tmp_path / "image_proj_model.pt")
    with pytest.raises(RuntimeError, match="not EditCLIP's projection"):
        editclip.load_projection(tmp_path)
    with pytest.raises(RuntimeError, match="no exemplar-editor projection"):
        editclip.load_projection(tmp_path / "empty")
    torch.save(state, tmp_path / "image_proj_model.pt")
    half = editclip.load_projection(tmp_path, dtype=torch.float16)
    assert half[0].weight.dtype == torch.float16 and editclip.load_projection(tmp_path)[0].weight.dtype == torch.float32
    # read with weights_only: a file that would run code when unpickled is refused, not executed
    torch.save({"proj.weight": _Unpicklable()}, tmp_path / "image_proj_model.pt")
    with pytest.raises(pickle.UnpicklingError):
        editclip.load_projection(tmp_path)


class _Unpicklable:
    """An object that only a full unpickler rebuilds (torch.load(weights_only=True) refuses it)."""


def test_sd15_editor_projection_comes_from_the_hub_checkpoint_beside_its_unet(monkeypatch):
    """On sd15 the projection is QWW/EditCLIP-IP2P's image_proj_model.pt, fetched (or, offline, read
    from the local cache) beside the unet/ that models.load read; the other profiles read the folder
    of the registry."""
    import huggingface_hub

    from editnb.methods.editclip import inference

    calls = []

    def fetch(repo, filename, local_files_only):
        calls.append((repo, filename, local_files_only))
        return f"/cache/{repo}/snapshot/{filename}"

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fetch)
    monkeypatch.setattr(models, "hub_reachable", lambda *a, **k: False)
    assert inference._editor_folder("sd15") == Path("/cache/QWW/EditCLIP-IP2P/snapshot")
    monkeypatch.setattr(models, "hub_reachable", lambda *a, **k: True)
    inference._editor_folder("sd15")
    assert calls == [("QWW/EditCLIP-IP2P", "image_proj_model.pt", True), ("QWW/EditCLIP-IP2P", "image_proj_model.pt", False)]
    assert inference._editor_folder("toy") == models.toy_path("editclip-ip2p") and len(calls) == 2


def test_editor_refuses_a_projection_from_another_checkpoint(monkeypatch, tmp_path):
    from editnb.methods.editclip import inference

    torch.save({"proj.weight": torch.zeros(768, 5), "proj.bias": torch.zeros(768), "norm.weight": torch.ones(768),
                "norm.bias": torch.zeros(768)}, tmp_path / "image_proj_model.pt")
    monkeypatch.setattr(inference, "_editor_folder", lambda profile: tmp_path)
    with pytest.raises(RuntimeError, match="maps 5 -> 768.*different checkpoints"):
        editclip.load_editor(profile="sd15-shaped", device="cpu", dtype=torch.float32)


# ------------------------------------------------------------------ the two objectives (supplement Sec. G.1)


def test_contrastive_loss_is_clips_symmetric_cross_entropy_with_shared_instructions_as_positives():
    """Plain torch reference: logits = min(exp(s), 100) E T^T; each row's target spreads evenly over the
    items with its instruction (one-hot when all differ); the loss is the mean of the image->text and
    text->image cross-entropies."""
    from editnb.methods.editclip import contrastive_loss

    gen = torch.Generator().manual_seed(0)
    E = torch.nn.functional.normalize(torch.randn(4, 8, generator=gen), dim=-1)
    T = torch.nn.functional.normalize(torch.randn(4, 8, generator=gen), dim=-1)
    scale = torch.tensor(2.0)

    def reference(instructions, s):
        logits = min(float(np.exp(s)), 100.0) * E @ T.T
        pos = torch.tensor([[float(a == b) for b in instructions] for a in instructions])
        target = pos / pos.sum(1, keepdim=True)
        ce = lambda lg: -(target * torch.log_softmax(lg, -1)).sum(-1).mean()  # noqa: E731
        return (ce(logits) + ce(logits.T)) / 2

    distinct = ["make it red", "make it blue", "remove it", "add a square"]
    assert contrastive_loss(E, T, scale, distinct).item() == pytest.approx(reference(distinct, 2.0).item(), rel=1e-5)
    plain = (torch.nn.functional.cross_entropy(np.exp(2.0) * E @ T.T, torch.arange(4))
             + torch.nn.functional.cross_entropy(np.exp(2.0) * T @ E.T, torch.arange(4))) / 2
    assert contrastive_loss(E, T, scale, distinct).item() == pytest.approx(plain.item(), rel=1e-5)
    shared = ["make it red", "make it red", "remove it", "make it red"]
    loss = contrastive_loss(E, T, scale, shared)
    assert loss.item() == pytest.approx(reference(shared, 2.0).item(), rel=1e-5)
    assert abs(loss.item() - plain.item()) > 1e-3  # the shared positives count
    big = torch.tensor(float(np.log(1000.0)))  # CLIP clamps the temperature at 100
    assert contrastive_loss(E, T, big, distinct).item() == pytest.approx(reference(distinct, np.log(1000.0)).item(), rel=1e-5)
    # a perfect match of edits and instructions is the loss's minimum direction: aligned pairs lose less
    assert contrastive_loss(T, T, scale, distinct) < contrastive_loss(E, T, scale, distinct)


def test_perceptual_distance_is_lpips_recipe_without_the_class_token():
    """Per layer: unit-normalise each token's channels, squared difference summed over channels,
    mean over tokens (token 0, the class token, left out); layers summed."""
    from editnb.methods.editclip import perceptual_distance

    a = torch.zeros(2, 3, 4)  # (B, tokens, dim): class token + 2 patch tokens
    a[..., 0] = 1.0
    b = a.clone()
    b[1, 1:, 0], b[1, 1:, 1] = -3.0, 0.0  # item 1's patch tokens point the other way (unit: -e0)
    b[:, 0] = 5.0  # class tokens differ: must not count
    d = perceptual_distance([a, a], [b, b])
    assert d.shape == (2,)
    assert d.tolist() == pytest.approx([0.0, 2 * 4.0])  # |e0 - (-e0)|^2 = 4 per token, mean 4, two layers
    scaled = perceptual_distance([a], [7 * a])  # channel scale does not count (unit-normalised)
    assert scaled.tolist() == pytest.approx([0.0, 0.0])
    half = b.clone()
    half[1, 2] = a[1, 2]  # one of the two patch tokens agrees again: mean over tokens halves
    assert perceptual_distance([a], [half])[1].item() == pytest.approx(2.0)
    turned = a.clone()
    turned[1, 1:, 0], turned[1, 1:, 1] = 0.0, 2.0  # orthogonal: |e0 - e1|^2 = 1 + 1
    assert perceptual_distance([a], [turned])[1].item() == pytest.approx(2.0)


def test_predict_x0_inverts_the_forward_noising_of_ddpm():
    from diffusers import DDPMScheduler

    from editnb.methods.editclip import predict_x0

    sched = DDPMScheduler(num_train_timesteps=1000)
    gen = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 4, 8, 8, generator=gen), torch.randn(3, 4, 8, 8, generator=gen)
    t = torch.tensor([10, 500, 990])
    z_t = sched.add_noise(x0, eps, t)
    assert torch.allclose(predict_x0(sched, z_t, eps, t), x0, atol=1e-3)
    a = sched.alphas_cumprod[500]
    assert torch.allclose(predict_x0(sched, z_t[1:2], eps[1:2], t[1:2]), (z_t[1:2] - (1 - a).sqrt() * eps[1:2]) / a.sqrt())


def test_exemplar_objective_is_the_noise_loss_plus_lambda_2_times_the_input_preservation(random_ip2p):
    """Recomputed in plain steps from the same generator: noise and t drawn in that order, the UNet
    fed [z_t, z_in] with the condition, MSE to the noise; the preservation term is the perceptual
    distance between the decoded one-step x_0 and the INPUT image; total = noise + lambda_2 x it;
    dropped rows get a zero input latent."""
    import torch.nn.functional as F

    from editnb.features import ClipFeatures
    from editnb.methods.editclip import exemplar_objective, perceptual_distance, predict_x0

    pipe = random_ip2p
    features = ClipFeatures(*models.load("clip", profile="toy"), name="toy-clip")
    gen = torch.Generator().manual_seed(0)
    x_in = torch.rand(2, 3, 64, 64, generator=gen) * 2 - 1
    x_tgt = torch.rand(2, 3, 64, 64, generator=gen) * 2 - 1
    cond = torch.randn(2, 4, pipe.unet.config.cross_attention_dim, generator=gen)
    seen = []
    unet = lambda x, t, encoder_hidden_states: (seen.append(x), pipe.unet(x, t, encoder_hidden_states=encoder_hidden_states))[1]  # noqa: E731
    drop = torch.tensor([False, True])
    with torch.no_grad():
        terms = exemplar_objective(unet, pipe.vae, pipe.scheduler, features, cond, x_in, x_tgt,
                                   torch.Generator().manual_seed(5), lambda_2=0.3, drop_image=drop)
        vae, sched = pipe.vae, pipe.scheduler
        z_tgt = vae.encode(x_tgt).latent_dist.mode() * vae.config.scaling_factor
        z_in = vae.encode(x_in).latent_dist.mode()
        g = torch.Generator().manual_seed(5)
        noise = torch.randn(z_tgt.shape, generator=g)
        t = torch.randint(0, sched.config.num_train_timesteps, (2,), generator=g)
        z_t = sched.add_noise(z_tgt, noise, t)
        z_in_kept = torch.stack([z_in[0], torch.zeros_like(z_in[1])])
        eps = pipe.unet(torch.cat([z_t, z_in_kept], 1), t, encoder_hidden_states=cond).sample
        x0 = vae.decode(predict_x0(sched, z_t, eps, t).clamp(-20, 20) / vae.config.scaling_factor).sample.clamp(-1, 1)
        preservation = perceptual_distance(features.pixel_hidden_states(x0), features.pixel_hidden_states(x_in)).mean()
    assert torch.equal(seen[0][1, 4:], torch.zeros_like(seen[0][1, 4:])) and seen[0][0, 4:].abs().sum() > 0
    assert terms.noise.item() == pytest.approx(F.mse_loss(eps, noise).item(), rel=1e-5)
    assert terms.preservation.item() == pytest.approx(preservation.item(), rel=1e-4)
    assert terms.total.item() == pytest.approx(terms.noise.item() + 0.3 * terms.preservation.item(), rel=1e-5)
    with torch.no_grad():
        off = exemplar_objective(unet, pipe.vae, pipe.scheduler, features, cond, x_in, x_tgt,
                                 torch.Generator().manual_seed(5), lambda_2=0.0, drop_image=drop)
    assert off.preservation.item() == 0.0 and off.total.item() == pytest.approx(terms.noise.item(), rel=1e-5)
    assert editclip.LAMBDA_2 == 0.05  # supplement Sec. G.1


def test_exemplar_objective_compares_an_image_in_the_input_range(random_ip2p):
    """The preservation term compares the decoded estimate as an IMAGE, clipped to [-1, 1] like the
    input, even when the one-step estimate runs far out (a UNet predicting huge noise)."""
    from editnb.features import ClipFeatures
    from editnb.methods.editclip import exemplar_objective

    pipe = random_ip2p

    class Recording(ClipFeatures):
        seen: list = []

        def pixel_hidden_states(self, x):
            self.seen.append(x.detach())
            return super().pixel_hidden_states(x)

    features = Recording(*models.load("clip", profile="toy"), name="toy-clip")
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 64, 64, generator=gen) * 2 - 1
    cond = torch.randn(2, 4, pipe.unet.config.cross_attention_dim, generator=gen)
    huge = lambda x_, t, encoder_hidden_states: type("Out", (), {"sample": torch.full_like(x_[:, :4], 1e3) * torch.tensor([1.0, -1.0])[:, None, None, None]})()  # noqa: E731
    with torch.no_grad():
        exemplar_objective(huge, pipe.vae, pipe.scheduler, features, cond, x, x, gen, lambda_2=0.05)
    estimate, image = features.seen
    assert torch.equal(image, x)  # the input itself, unchanged
    assert estimate.min() >= -1 and estimate.max() <= 1
    assert (estimate == 1).any() and (estimate == -1).any()  # the decoder ran out of range both ways, and was clipped


def test_exemplar_edit_conditions_eq5_on_the_pairs_embedding_and_the_unscaled_image_latents(monkeypatch):
    """The editing call (Eq. 5, supplement Sec. G.3): the condition is the pair's projected embedding,
    the unconditional one its zeros, s_E = 7 and s_I = 1.5 by default, the image conditioning the
    VAE latents WITHOUT the scaling factor (InstructPix2Pix's convention), 50 steps by default; one
    pair serves every image, k pairs need k images, and a bad generator is refused first."""
    from editnb.methods.editclip import inference

    calls = {}
    monkeypatch.setattr(diffusion, "encode_image", lambda pipe, images, scaled: calls.update(images=images, scaled=scaled) or "latents")
    monkeypatch.setattr(diffusion, "starting_noise", lambda pipe, n, gen, steps, sched: calls.update(n=n, gen=gen) or "z_T")
    monkeypatch.setattr(diffusion, "denoise", lambda pipe, z, c, steps, scheduler: calls.update(c=c, steps=steps, sched=scheduler) or ("z_0", None))
    monkeypatch.setattr(diffusion, "decode", lambda pipe, z: ["decoded"])
    pairs = []
    one_pair = torch.arange(6.0).reshape(1, 2, 3)
    editor = SimpleNamespace(pipe="pipe", condition=lambda ex_in, ex_ed: pairs.append((ex_in, ex_ed)) or one_pair)

    a, b, x, y = (np.full((8, 8, 3), v, np.uint8) for v in range(4))
    gen = torch.Generator()
    r = inference.exemplar_edit(editor, a, x, y, generator=gen)
    assert pairs == [([x], [y])] and calls["images"] == [a] and calls["scaled"] is False
    c = calls["c"]
    assert torch.equal(c.cond, one_pair) and torch.equal(c.uncond, torch.zeros_like(one_pair))
    assert (c.guidance, c.image_guidance, c.image_latents) == (7.0, 1.5, "latents")
    assert (calls["steps"], calls["sched"], calls["n"], calls["gen"]) == (50, "ddim", 1, gen)
    assert torch.equal(r.found["condition"], one_pair)

    inference.exemplar_edit(editor, [a, b], x, y, s_E=3.0, s_I=1.2, steps=9)  # one pair for two images
    assert calls["images"] == [a, b] and calls["n"] == 2 and calls["steps"] == 9
    assert torch.equal(calls["c"].cond, one_pair.expand(2, -1, -1)) and (calls["c"].guidance, calls["c"].image_guidance) == (3.0, 1.2)
    inference.exemplar_edit(editor, (a, b), (x, x), (y, y))  # pairs given as a tuple are a list of pairs
    assert pairs[-1] == ((x, x), (y, y))
    two = torch.zeros(2, 2, 3)
    with pytest.raises(ValueError, match=r"^2 exemplar pairs for 3 images; give one pair, or one per image$"):
        inference.exemplar_edit(editor, [a, b, a], None, None, condition=two)
    with pytest.raises(ValueError, match="generator must be a torch.Generator"):
        inference.exemplar_edit(editor, a, x, y, generator=0)


def test_the_edit_condition_is_the_projection_in_its_own_precision_handed_over_in_the_pipelines(monkeypatch):
    """condition(): the pair encoder's hidden states (any precision) go through the projection in the
    projection's dtype, and come out in the pipeline's (an fp16 UNet gets fp16 conditions)."""
    from editnb.methods.editclip import inference

    monkeypatch.setattr(diffusion, "execution_device", lambda pipe: torch.device("cpu"))
    projection = torch.nn.Linear(3, 2)
    h = torch.randn(1, 4, 3, dtype=torch.float64)
    encoder = SimpleNamespace(hidden_states=lambda ins, eds: h)
    editor = inference.ExemplarEditor(SimpleNamespace(unet=SimpleNamespace(dtype=torch.float16)), projection, encoder)
    c = editor.condition(["in"], ["ed"])
    assert c.dtype == torch.float16
    torch.testing.assert_close(c, projection(h.float()).detach().half())
