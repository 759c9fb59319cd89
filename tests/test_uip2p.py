"""UIP2P: the ERC losses, the training step (what it changes, what it never reads), the
reverse-instruction data, the matched InstructPix2Pix initialisation and the Elo rating."""
import math

import numpy as np
import pytest
import torch

from editnb import metrics
from editnb.features import ClipFeatures
from editnb.methods import get
from editnb.methods.uip2p import (GroundTruthAccessError, attention_consistency_loss, clip_directional_loss,
                                  directional_loss, erc_loss, reconstruction_loss, rule_based_reverse, similarity_loss,
                                  table_4_rows)
from editnb.methods.uip2p.data import ReverseInstructionDataset, batch_of, clip_filter, reversible_batch
from editnb.toy import world

# ------------------------------------------------------------------ losses


def test_reconstruction_loss_is_zero_for_identical_images_and_grows_with_the_difference():
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    assert reconstruction_loss(x, x.clone()).item() == 0.0
    assert reconstruction_loss(x + 0.1, x).item() == pytest.approx(0.1, abs=1e-6)
    with pytest.raises(ValueError, match="differ in shape"):
        reconstruction_loss(x, x[:1])


def test_attention_loss_is_zero_for_identical_maps_and_ignores_their_scale():
    a = torch.rand(3, 16, 16)
    assert attention_consistency_loss(a, a.clone()).item() == pytest.approx(0.0, abs=1e-12)
    # the same regions at another overall strength (another instruction length) is still consistent
    assert attention_consistency_loss(a, 3 * a).item() == pytest.approx(0.0, abs=1e-10)
    b = torch.zeros(3, 16, 16)
    b[:, :8] = 1.0
    c = torch.zeros(3, 16, 16)
    c[:, 8:] = 1.0
    assert attention_consistency_loss(b, c).item() > 0.5  # attention on opposite halves


def test_directional_loss_is_zero_when_the_image_moves_along_the_text_direction():
    text_dir = torch.randn(4, 32)
    assert directional_loss(text_dir, text_dir).item() == pytest.approx(0.0, abs=1e-6)
    # only the direction counts, not the length
    assert directional_loss(2.5 * text_dir, text_dir).item() == pytest.approx(0.0, abs=1e-6)
    assert directional_loss(-text_dir, text_dir).item() == pytest.approx(2.0, abs=1e-6)
    # an item without a text direction (same captions) is left out, not counted as a failure
    dirs = torch.stack([text_dir[0], torch.zeros(32)])
    assert directional_loss(torch.stack([text_dir[0], torch.randn(32)]), dirs).item() == pytest.approx(0.0, abs=1e-6)


class _LinearClip:
    """A CLIP stand-in with a known geometry: images embed to their flattened pixels' first 6
    values, texts to fixed vectors."""

    def __init__(self, text_vectors: dict):
        self.text_vectors = text_vectors

    def pixel_features(self, x):
        return x.flatten(1)[:, :6]

    def texts(self, texts):
        return torch.stack([self.text_vectors[t] for t in texts])


def test_clip_loss_compares_the_image_change_with_the_caption_change():
    e = torch.eye(6)
    feats = _LinearClip({"a red circle": e[0], "a blue circle": e[0] + e[1]})  # text direction: e1
    inputs = torch.zeros(1, 3, 2, 2)
    along = inputs.clone()
    along.view(1, -1)[0, 1] = 0.7  # the image moves along e1
    across = inputs.clone()
    across.view(1, -1)[0, 2] = 0.7  # ... or along e2
    good = clip_directional_loss(feats, inputs, along, ["a red circle"], ["a blue circle"])
    bad = clip_directional_loss(feats, inputs, across, ["a red circle"], ["a blue circle"])
    assert good.item() == pytest.approx(0.0, abs=1e-6) and bad.item() == pytest.approx(1.0, abs=1e-6)


class _GeometricClip(ClipFeatures):
    """ClipFeatures with known embeddings (its own ``distance``): images embed to their first 6
    pixel values, normalised; texts to fixed unit vectors."""

    def __init__(self, text_vectors: dict):
        self.text_vectors = text_vectors

    def pixel_features(self, x):
        return torch.nn.functional.normalize(x.flatten(1)[:, :6], dim=-1)

    def texts(self, texts):
        return torch.stack([self.text_vectors[t] for t in texts])


def test_similarity_loss_is_one_minus_the_cosine_of_the_edited_image_and_its_caption():
    """L_sim (Sec. 4.1) = 1 - cos(E_I(I_e), E_T(T_e)), mean over the batch: 0 when the edited image
    shows its caption, 1 when orthogonal, 2 when opposite; a sign flip or a swapped argument fails."""
    e = torch.eye(6)
    feats = _GeometricClip({"a red circle": e[0], "a blue circle": e[1]})
    images = torch.zeros(3, 3, 2, 2)
    images.view(3, -1)[0, 0] = 0.5    # shows "a red circle" (e0)
    images.view(3, -1)[1, 0] = 1.0    # e0 against "a blue circle" (e1): orthogonal
    images.view(3, -1)[2, 1] = -2.0   # -e1 against "a blue circle": opposite
    per_item = [similarity_loss(feats, images[i:i + 1], [c]).item()
                for i, c in enumerate(["a red circle", "a blue circle", "a blue circle"])]
    assert per_item == pytest.approx([0.0, 1.0, 2.0], abs=1e-6)
    both = similarity_loss(feats, images[:2], ["a red circle", "a blue circle"])
    assert both.item() == pytest.approx(0.5, abs=1e-6)
    # differentiable in the image, and descending it turns the image toward its caption
    x = images[1:2].clone().requires_grad_(True)
    similarity_loss(feats, x, ["a blue circle"]).backward()
    assert x.grad.view(-1)[1] < 0


def test_erc_loss_weights_the_terms_and_refuses_unknown_or_negative_weights():
    one = torch.tensor(1.0)
    terms = erc_loss(one, 2 * one, 3 * one, 4 * one, {"clip": 1, "recon": 0.5, "sim": 0, "attn": 2})
    assert terms.total.item() == pytest.approx(1 + 1 + 0 + 8)
    with pytest.raises(ValueError, match="unknown loss weight"):
        erc_loss(one, one, one, one, {"lpips": 1})
    with pytest.raises(ValueError, match=">= 0"):
        erc_loss(one, one, one, one, {"clip": -1})


# ------------------------------------------------------------------ the training step


@pytest.fixture(scope="module")
def task():
    from editnb.methods.uip2p.task import RECIPES, UIP2PTask

    torch.manual_seed(0)
    recipe = RECIPES["uip2p"]
    return UIP2PTask("cpu", recipe, 0, **recipe.options)


def test_a_training_step_changes_the_unet_and_nothing_frozen_and_reads_no_edited_image(task, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("a UIP2P code path read a ground-truth edited image")

    monkeypatch.setattr(world.Edit, "edited_image", forbidden)
    monkeypatch.setattr(world.Edit, "mask", forbidden)
    unet = task.trainable()
    assert unet.config.in_channels == 8 and not unet.conv_in.weight[:, 4:].any()  # IP2P's zero image channels
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    frozen_before = {name: {k: v.clone() for k, v in m.state_dict().items()} for name, m in task.frozen().items()}
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    batch = task.data_fn(3, 2, 0)  # through the guard: raises GroundTruthAccessError if anything peeks
    loss = task.loss(batch, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and set(task.last_terms) == {"clip", "recon", "sim", "attn", "total"}
    opt.zero_grad()
    loss.backward()
    for name, m in task.frozen().items():
        assert all(p.grad is None for p in m.parameters()), f"{name} got gradients"
    opt.step()
    after = unet.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert after["conv_in.weight"][:, 4:].abs().sum() > 0  # the image channels learn from ERC
    kept = [k for k in before if k.startswith(tuple(task.frozen_blocks))]
    assert kept and all(torch.equal(before[k], after[k]) for k in kept)  # toy-sd's time embedding stays
    for name, m in task.frozen().items():
        assert all(torch.equal(frozen_before[name][k], v) for k, v in m.state_dict().items()), f"{name} changed"


def test_erc_step_outputs_and_attention_maps_stay_in_the_graph(task):
    from editnb.methods.uip2p import erc_step

    b = reversible_batch(0, 2)
    terms, out = erc_step(task.models, b.images, b.instructions, b.reverse_instructions, b.input_captions,
                          b.edited_captions, torch.Generator().manual_seed(1), dropout=0.0)
    assert out.edited.shape == out.reconstructed.shape == b.images.shape
    assert out.forward_attention.shape == out.reverse_attention.shape == (2, 16, 16)
    assert out.forward_attention.requires_grad and out.reverse_attention.requires_grad
    assert (out.forward_attention > 0).all()  # the instruction's words get attention everywhere
    grads = torch.autograd.grad(terms.attn, [p for p in task.unet.parameters() if p.requires_grad], allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)  # L_attn trains the UNet
    with pytest.raises(ValueError, match="one per image"):
        erc_step(task.models, b.images, b.instructions[:1], b.reverse_instructions, b.input_captions,
                 b.edited_captions, torch.Generator())


def test_erc_step_takes_chosen_noise_levels_and_refuses_ones_off_the_schedule(task):
    from editnb.methods.uip2p import erc_step

    b = reversible_batch(0, 2)
    args = (task.models, b.images, b.instructions, b.reverse_instructions, b.input_captions, b.edited_captions)
    with torch.no_grad():
        _, out = erc_step(*args, torch.Generator().manual_seed(1), dropout=0.0, t=850, t_hat=[10, 20])
        _, drawn = erc_step(*args, torch.Generator().manual_seed(1), dropout=0.0)
    assert out.t.tolist() == [850, 850] and out.t_hat.tolist() == [10, 20]
    assert drawn.t.tolist() != [850, 850]  # without them, t is drawn
    with pytest.raises(ValueError, match=r"\[0, 999\]"):
        erc_step(*args, torch.Generator(), t=1000)


def test_items_without_their_instruction_train_reconstruction_only(task):
    from editnb.methods.uip2p import erc_step

    b = reversible_batch(0, 2)
    args = (task.models, b.images, b.instructions, b.reverse_instructions, b.input_captions, b.edited_captions)
    with torch.no_grad():  # dropout 0.3: a draw of 0.25 and one of 0.7 (seeded): text dropped, then kept
        gen = torch.Generator().manual_seed(0)
        draws = torch.rand(2, generator=torch.Generator().manual_seed(0))
        terms, out = erc_step(*args, gen, dropout=0.3, t=500, t_hat=300)
    dropped = draws < 0.6
    assert dropped.any() and not dropped.all(), draws
    assert (out.forward_attention[dropped] == 0).all()  # no instruction words, no instruction map
    with torch.no_grad():  # the CLIP terms are those of the kept item alone
        k = int((~dropped).nonzero()[0])
        alone = uip2p_losses().clip_directional_loss(task.models.features, b.images[k:k + 1], out.edited[k:k + 1],
                                                     b.input_captions[k:k + 1], b.edited_captions[k:k + 1])
    assert torch.allclose(terms.clip, alone, atol=1e-5)


def uip2p_losses():
    from editnb.methods.uip2p import losses

    return losses


def test_the_guard_raises_when_the_edited_image_or_its_mask_is_touched():
    item = ReverseInstructionDataset("train")[5]
    for name in ("edited_image", "target", "mask", "changed", "reverse"):
        with pytest.raises(GroundTruthAccessError, match="must not see"):
            getattr(item, name)
    edit = world.edit_for("train", 5)
    assert (item.input_caption, item.instruction, item.edited_caption, item.reverse_instruction) == (
        edit.source_caption, edit.instruction, edit.target_caption, edit.reverse_instruction)
    assert np.array_equal(item.source_image(), edit.source_image())
    b = batch_of([item])
    assert b.images.shape == (1, 3, 64, 64) and b.reverse_instructions == [edit.reverse_instruction]


def test_matched_ip2p_starts_from_the_same_initialisation(task):
    from editnb.toy.tasks import IP2PTask
    from editnb.toy.train import recipe_for

    fresh = type(task)("cpu", task_recipe(), 0).unet.state_dict()
    for recipe in (recipe_for("ip2p", batch_size=2), recipe_for("ip2p", batch_size=2, init="data/models/toy-sd")):
        ip2p = IP2PTask("cpu", recipe, 0).unet.state_dict()
        assert ip2p.keys() == fresh.keys() and all(torch.equal(ip2p[k], fresh[k]) for k in fresh)


def task_recipe():
    from editnb.methods.uip2p.task import RECIPES

    return RECIPES["uip2p"]


def test_uip2p_trains_from_the_cli_registry_and_runs_as_ip2p():
    from editnb.models import REGISTRY, load
    from editnb.toy.train import MODELS, recipe_for

    assert "uip2p" in MODELS and recipe_for("uip2p", steps=3).steps == 3
    assert get("uip2p").models == ("uip2p",) and REGISTRY["uip2p"].toy == "toy-uip2p"
    with pytest.raises(RuntimeError, match="no public sd15 weights"):
        load("uip2p", profile="sd15")


# ------------------------------------------------------------------ data


def test_rule_based_reverse_instructions_on_the_captions_of_table_4():
    cases = [
        ("A dog sitting on a couch", "add a ball next to the dog", "A dog sitting on a couch with a ball",
         "remove the ball"),
        ("A dog sitting on a couch", "remove the dog", "An empty couch", "add the dog back"),
        ("A dog sitting on a couch", "move the dog to the floor", "A dog sitting on the floor",
         "move the dog back to the couch"),
        ("A black car parked on the street", "change the car color to red", "A red car parked on the street",
         "change the car color back to black"),
        ("A car parked on the street", "move the car to the garage", "A car parked in the garage",
         "move the car back to the street"),
        ("A man wearing a denim jacket", "make the jacket a rain coat", "A man wearing a rain coat",
         "make the coat a denim jacket"),  # Sec. 8.1's example
        ("A sofa in the living room", "add pillows", "A sofa in the living room with pillows", "remove the pillows"),
    ]
    for caption, instruction, edited, reverse in cases:
        row = rule_based_reverse(caption, instruction)
        assert (row.edited_caption, row.reverse_instruction) == (edited, reverse), instruction
    # a colour the caption does not name cannot be restored by name
    assert rule_based_reverse("A dog sitting on a couch", "change the dog's color to brown").reverse_instruction == \
        "change the dog's color back to its original color"
    with pytest.raises(ValueError, match="no rule"):
        rule_based_reverse("A dog sitting on a couch", "make it look happier")


def test_toyworld_gives_table_4_rows_with_a_reverse_instruction_for_every_kind():
    rows = table_4_rows(2)
    assert len(rows) == 2 * len(world.EDIT_KINDS) and {r["kind"] for r in rows} == set(world.EDIT_KINDS)
    for r in rows:
        assert r["Reverse Instruction"] and r["Reverse Instruction"] != r["Edit Instruction"]
    for i in range(30):  # the reverse instruction undoes the edit: applying it to the target gives the source
        e = world.edit_for("train", i)
        assert e.reverse().instruction == e.reverse_instruction and e.reverse().target == e.source


def test_clip_filter_keeps_matching_captions_at_threshold_0_2():
    from editnb.features import clip_features

    feats = clip_features("clip", profile="toy")
    scene = world.scene_for("test", 0)
    phrases = {o.phrase for o in scene.objects}
    other = next(s for s in (world.scene_for("test", i) for i in range(1, 50))
                 if s.background != scene.background and not {o.phrase for o in s.objects} & phrases)
    image = world.render(scene)
    keep, sims = clip_filter(feats, [image, image], [scene.caption, other.caption])
    assert sims[0] > sims[1]
    assert list(keep) == [s >= 0.2 for s in sims]
    keep_all, _ = clip_filter(feats, [image, image], [scene.caption, other.caption], threshold=-1.0)
    assert keep_all.all()
    with pytest.raises(ValueError, match="one caption per image"):
        clip_filter(feats, [image], [scene.caption, other.caption])


# ------------------------------------------------------------------ Elo (Sec. 3)


def test_elo_on_a_hand_made_vote_sequence():
    votes = [("uip2p", "ip2p", "uip2p"), ("uip2p", "ip2p", "uip2p"), ("magicbrush", "uip2p", "magicbrush"),
             ("ip2p", "magicbrush", None)]
    board = {name: (rating, games) for name, rating, games in metrics.elo_leaderboard(votes)}
    # by hand: game 1 at equal ratings moves K/2 = 16 points
    r_u, r_i = 1516.0, 1484.0
    e = 1 / (1 + 10 ** ((r_i - r_u) / 400))  # game 2: 0.5459
    r_u, r_i = r_u + 32 * (1 - e), r_i - 32 * (1 - e)
    e_m = 1 / (1 + 10 ** ((r_u - 1500) / 400))  # game 3: the newcomer wins
    r_m, r_u = 1500 + 32 * (1 - e_m), r_u - 32 * (1 - e_m)
    e_i = 1 / (1 + 10 ** ((r_m - r_i) / 400))  # game 4: a draw
    r_i, r_m = r_i + 32 * (0.5 - e_i), r_m - 32 * (0.5 - e_i)
    assert board["uip2p"][0] == pytest.approx(r_u) and board["ip2p"][0] == pytest.approx(r_i)
    assert board["magicbrush"][0] == pytest.approx(r_m)
    assert round(r_u, 2) == 1513.13 and board["uip2p"][1] == 3
    assert math.isclose(sum(r for r, _ in board.values()), 3 * 1500)  # every game moves points, never makes them


def test_forward_then_reverse_measures_reconstruction_and_success_per_kind(random_ip2p):
    from editnb.methods.uip2p.toy_eval import forward_reverse

    edits = [world.edit_for("test", i, kind) for i, kind in enumerate(("recolor", "add", "recolor"))]
    r = forward_reverse(random_ip2p, edits, steps=2, batch_size=2)
    assert len(r["forward"]) == len(r["reverse"]) == 3 and r["reverse"][0].shape == (64, 64, 3)
    assert 0 <= r["recon_mae"] <= 255 and 0 <= r["recon_scene"] <= 1
    assert set(r["success_by_kind"]) == {"recolor", "add"}  # kinds in EDIT_KINDS order, only those present


def test_magicbrush_multi_turn_edits_the_models_own_previous_output(monkeypatch):
    from editnb.methods.uip2p import toy_eval

    seen = []

    def fake_edit(pipe, images, instructions, steps, seed, batch_size):
        seen.append([np.asarray(im).copy() for im in images])
        return [np.clip(np.asarray(im, np.int16) + 10, 0, 255).astype(np.uint8) for im in images]

    from editnb.bench.data import load_toy_magicbrush
    from editnb.runtime import data_dir

    root = data_dir() / "bench" / "toy-magicbrush"
    monkeypatch.setattr(toy_eval, "_edit", fake_edit)
    multi = toy_eval.magicbrush_scores(None, load_toy_magicbrush(root, "multi")[:6], steps=1)  # two chains of three turns
    assert [len(batch) for batch in seen] == [2, 2, 2]
    for before, after in zip(seen, seen[1:]):  # turn t+1 starts from turn t's output, not its ground truth
        assert all(np.array_equal(np.clip(b.astype(np.int16) + 10, 0, 255), a) for b, a in zip(before, after))
    seen.clear()
    single = toy_eval.magicbrush_scores(None, load_toy_magicbrush(root, "single")[:3], steps=1)
    assert [len(batch) for batch in seen] == [3]  # single-turn items: one edit each
    assert {"L1", "L2", "CLIP-I", "CLIP-T", "toy-DINO"} <= set(single) and 0 < multi["L1"] < 1


def test_export_stores_the_trained_blocks_once_and_loads_back_on_toy_sds_parts(task, tmp_path):
    from safetensors.torch import load_file, save_file

    from editnb.models import UNET_BLOCKS_WEIGHTS, ip2p_from_blocks

    unet = task.trainable()
    with torch.no_grad():
        unet.conv_in.weight[:, 4:] = 0.25  # a trained-looking image channel
    task.export(unet, tmp_path / "toy-uip2p")
    stored = load_file(str(tmp_path / "toy-uip2p" / UNET_BLOCKS_WEIGHTS))
    assert stored and not any(k.startswith("time_embedding") for k in stored)
    assert all(v.dtype == torch.float16 for v in stored.values())
    pipe = ip2p_from_blocks(tmp_path / "toy-uip2p")
    loaded, sd = pipe.unet.state_dict(), task_sd_unet().state_dict()
    assert loaded.keys() == unet.state_dict().keys() and pipe.unet.config.in_channels == 8
    assert all(torch.equal(loaded[k], sd[k].float()) for k in loaded if k.startswith("time_embedding"))
    assert torch.equal(loaded["conv_in.weight"], unet.conv_in.weight.detach().half().float())
    stored.pop("conv_in.weight")  # a file that no longer covers the UNet is refused, naming the key
    save_file(stored, str(tmp_path / "toy-uip2p" / UNET_BLOCKS_WEIGHTS), metadata={"frozen": "time_embedding"})
    with pytest.raises(RuntimeError, match="conv_in.weight"):
        ip2p_from_blocks(tmp_path / "toy-uip2p")


def task_sd_unet():
    from diffusers import UNet2DConditionModel

    from editnb.models import models_dir

    return UNet2DConditionModel.from_pretrained(str(models_dir() / "toy-sd"), subfolder="unet")


def test_freezing_names_real_blocks_and_the_matched_ip2p_freezes_the_same():
    from editnb.toy.tasks import IP2PTask, freeze_blocks
    from editnb.toy.train import recipe_for

    ip2p = IP2PTask("cpu", recipe_for("ip2p", batch_size=2), 0, frozen=task_recipe().options["frozen"])
    assert not any(p.requires_grad for p in ip2p.unet.time_embedding.parameters())
    assert all(p.requires_grad for p in ip2p.unet.conv_in.parameters())
    with pytest.raises(ValueError, match="no block.*time_embeding"):
        freeze_blocks(ip2p.unet, ["time_embeding"])


RECON_MARGIN = 15.0  # grey levels of 255; `editnb toy eval` measures 45 against 78 on 36 other edits


@pytest.mark.slow
def test_shipped_toy_uip2p_reconstructs_the_input_better_than_its_untrained_start():
    """The point of ERC, measured on held-out edits of every kind: reverse(forward(input)) with
    toy-uip2p is closer to the input than with the start it was trained from (which ignores the
    input image and draws the instruction's words)."""
    from editnb.methods.uip2p.toy_eval import forward_reverse, initial_pipeline, pipeline_from
    from editnb.models import toy_path

    edits = [world.edit_for("test", 200 + i, world.EDIT_KINDS[i % len(world.EDIT_KINDS)]) for i in range(12)]
    trained = forward_reverse(pipeline_from(toy_path("uip2p")), edits, steps=10)
    start = forward_reverse(initial_pipeline(), edits, steps=10)
    assert trained["recon_mae"] < start["recon_mae"] - RECON_MARGIN, (trained["recon_mae"], start["recon_mae"])


def test_erc_refuses_a_text_to_image_unet_naming_the_channels_and_the_fix(random_pipe):
    from editnb.methods.uip2p.erc import ERCModels

    p = random_pipe
    with pytest.raises(ValueError, match=r"ERC trains an InstructPix2Pix-style UNet with 8 input channels \(noisy latent "
                                         r"\+ image latent\), this one has 4; widen a text-to-image UNet with "
                                         r"editnb\.toy\.tasks\.ip2p_unet_from_sd"):
        ERCModels(p.unet, p.vae, p.text_encoder, p.tokenizer, p.scheduler, features=None)


def test_x0_estimate_inverts_ddpm_noising():
    """The one-step estimate of Algorithm 1 (I_e from the UNet's noise): (z_t - sqrt(1 - a_t) eps) / sqrt(a_t)
    returns the clean latent that add_noise noised, at every t."""
    from diffusers import DDPMScheduler

    from editnb.methods.uip2p.erc import x0_estimate

    sched = DDPMScheduler(num_train_timesteps=1000)
    gen = torch.Generator().manual_seed(0)
    z0, eps = torch.randn(3, 4, 8, 8, generator=gen), torch.randn(3, 4, 8, 8, generator=gen)
    t = torch.tensor([0, 400, 999])
    assert torch.allclose(x0_estimate(sched, sched.add_noise(z0, eps, t), eps, t), z0, atol=1e-3)
    a = sched.alphas_cumprod[400]
    zt = sched.add_noise(z0[1:2], eps[1:2], t[1:2])
    assert torch.allclose(x0_estimate(sched, zt, eps[1:2], t[1:2]), (zt - (1 - a).sqrt() * eps[1:2]) / a.sqrt())


def test_instruction_map_sums_the_words_attention_and_averages_the_levels_at_the_finest():
    """L_attn's map (Sec. 4.2) by hand: per cross-attention layer the attention of each query to the
    instruction's word tokens, summed over them (calls of one layer averaged), each level upsampled
    bilinearly to the finest level's size, then the mean over layers."""
    from types import SimpleNamespace

    import torch.nn.functional as F

    from editnb.attention.controller import Site
    from editnb.methods.uip2p.erc import instruction_map

    gen = torch.Generator().manual_seed(0)
    fine = [torch.softmax(torch.randn(2, 16, 3, generator=gen), -1) for _ in range(2)]  # two calls, 4x4
    coarse = [torch.softmax(torch.randn(2, 4, 3, generator=gen), -1)]                     # one call, 2x2
    sites = {"a_fine": Site("a_fine", "up", "cross", 4, 1, 0), "b_coarse": Site("b_coarse", "mid", "cross", 2, 1, 0)}
    store = SimpleNamespace(sites=sites, layers=lambda kind: list(sites) if kind == "cross" else [],
                            maps={("a_fine", 0): fine[0], ("a_fine", 1): fine[1], ("b_coarse", 0): coarse[0]})
    words = torch.tensor([[0.0, 1.0, 1.0], [0.0, 0.0, 1.0]])  # item 0: tokens 1 and 2; item 1: token 2
    got = instruction_map(store, words)
    f = ((fine[0] + fine[1]) / 2 * words[:, None]).sum(-1).reshape(2, 1, 4, 4)
    c = (coarse[0] * words[:, None]).sum(-1).reshape(2, 1, 2, 2)
    want = (f + F.interpolate(c, size=(4, 4), mode="bilinear", align_corners=False)) / 2
    assert got.shape == (2, 4, 4) and torch.allclose(got, want[:, 0], atol=1e-6)
    with pytest.raises(ValueError, match="no cross-attention was recorded"):
        instruction_map(SimpleNamespace(sites={}, layers=lambda kind: [], maps={}), words)


def test_the_two_training_timesteps_are_uniform_draws_or_the_given_ones_checked():
    """Algorithm 1 draws t and t-hat uniformly over the schedule [0, T) (or below max_timestep) with
    the caller's generator; given ones (an int for all, or one per item) are long ints in [0, T-1],
    and the draw still happens, so fixing t does not shift the noise that follows."""
    from diffusers import DDPMScheduler

    from editnb.methods.uip2p.erc import _timesteps

    sched = DDPMScheduler(num_train_timesteps=1000)
    g = torch.Generator().manual_seed(3)
    drawn = _timesteps(5, g, sched, None, "cpu")
    assert torch.equal(drawn, torch.randint(0, 1000, (5,), generator=torch.Generator().manual_seed(3)))
    below = _timesteps(64, torch.Generator().manual_seed(3), sched, 10, "cpu")
    assert torch.equal(below, torch.randint(0, 10, (64,), generator=torch.Generator().manual_seed(3)))
    g = torch.Generator().manual_seed(3)
    given = _timesteps(3, g, sched, None, "cpu", given=7.0)
    assert given.dtype == torch.long and given.tolist() == [7, 7, 7]
    assert torch.equal(torch.randint(0, 1000, (1,), generator=g), torch.randint(0, 1000, (4,), generator=torch.Generator().manual_seed(3))[3:])
    assert _timesteps(2, g, sched, None, "cpu", given=[0, 999]).tolist() == [0, 999]  # both ends of the schedule
    assert _timesteps(2, g, sched, None, "cpu", given=[0.0, 5.0]).dtype == torch.long
    for bad in (-1, 1000, [1, 2], [[1, 2, 3]]):
        with pytest.raises(ValueError, match=r"timesteps must be one int or 3 ints in \[0, 999\]"):
            _timesteps(3, g, sched, None, "cpu", given=bad)


def test_erc_step_is_a_function_of_its_generator_and_draws_below_max_timestep(task):
    """Algorithm 1's randomness (the dropout draw, t, the noise, t-hat, the second noise) comes from
    the caller's generator alone: the same seed gives the same step, another seed another one."""
    from editnb.methods.uip2p import erc_step

    b = reversible_batch(0, 2)
    args = (task.models, b.images, b.instructions, b.reverse_instructions, b.input_captions, b.edited_captions)
    with torch.no_grad():
        _, a = erc_step(*args, torch.Generator().manual_seed(4), dropout=0.0, max_timestep=6)
        _, same = erc_step(*args, torch.Generator().manual_seed(4), dropout=0.0, max_timestep=6)
        _, other = erc_step(*args, torch.Generator().manual_seed(5), dropout=0.0, t=a.t.tolist(), t_hat=a.t_hat.tolist())
    assert (a.t < 6).all() and (a.t_hat < 6).all()
    assert torch.equal(a.edited, same.edited) and torch.equal(a.reconstructed, same.reconstructed)
    assert not torch.equal(a.edited, other.edited)  # same noise levels, other noise


def test_erc_step_at_t_zero_edits_nothing_the_input_latent_is_scaled_once(task):
    """At t = t-hat = 0 the x_0 estimate is the noised latent itself (alpha-bar_0 ~ 1): the 'edited'
    and 'reconstructed' images are the VAE's reconstruction of the input, so the input latent must
    be the scaled VAE mode (SD's latent space), the image condition the unscaled one."""
    from editnb.methods.uip2p import erc_step

    b = reversible_batch(0, 2)
    args = (task.models, b.images, b.instructions, b.reverse_instructions, b.input_captions, b.edited_captions)
    with torch.no_grad():
        _, out = erc_step(*args, torch.Generator().manual_seed(0), dropout=0.0, t=0, t_hat=0)
        vae = task.models.vae
        again = vae.decode(vae.encode(b.images).latent_dist.mode()).sample
    assert (out.edited - again).abs().mean() < 0.05 and (out.reconstructed - again).abs().mean() < 0.05


@pytest.mark.parametrize("field, where", [(2, "instructions"), (3, "reverse_instructions"), (4, "input_captions"),
                                          (5, "edited_captions")])
def test_erc_step_names_the_list_that_is_short_and_refuses_a_dropout_of_a_third(task, field, where):
    from editnb.methods.uip2p import erc_step

    b = reversible_batch(0, 2)
    args = [task.models, b.images, b.instructions, b.reverse_instructions, b.input_captions, b.edited_captions]
    args[field] = args[field][:1]
    with pytest.raises(ValueError, match=rf"^1 {where} for 2 images: give one per image$"):
        erc_step(*args, torch.Generator())
    args[field] = [b.instructions, b.reverse_instructions, b.input_captions, b.edited_captions][field - 2]
    with pytest.raises(ValueError, match=r"^dropout must be in \[0, 1/3\) \(three disjoint 'dropout' bands\), got 0.3333"):
        erc_step(*args, torch.Generator(), dropout=1 / 3)
