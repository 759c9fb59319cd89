"""The attention figures of `editnb toy eval` (how object-bound toy-sd's attention is) on
hand-worked attention matrices."""
import numpy as np
import pytest
import torch

from editnb.toy import world
from editnb.toy.attention_stats import _patch_masks, own_object_ratio, row_entropy_fraction


def test_row_entropy_is_one_for_uniform_rows_zero_for_one_hot_and_half_for_half_the_keys():
    keys = 16
    uniform = torch.full((3, keys), 1 / keys)
    one_hot = torch.eye(keys)[:3]
    half = torch.zeros(keys).index_fill_(0, torch.arange(4), 0.25)[None]  # 4 of 16 keys: log 4 / log 16
    assert torch.allclose(row_entropy_fraction(uniform), torch.ones(3))
    assert torch.allclose(row_entropy_fraction(one_hot), torch.zeros(3), atol=1e-6)
    assert row_entropy_fraction(half).item() == pytest.approx(0.5)


def test_own_object_ratio_is_one_without_preference_and_keys_over_size_when_attention_stays_inside():
    keys = 16
    inside = torch.zeros(keys, dtype=torch.bool)
    inside[[1, 2, 5, 6]] = True  # an object of 4 patches of 16: a 1/4 share
    uniform = torch.full((keys, keys), 1 / keys)
    assert own_object_ratio(uniform, inside) == pytest.approx(1.0)
    stays = torch.zeros(keys, keys)
    stays[:, inside] = 1 / 4  # every row spreads over the object only
    assert own_object_ratio(stays, inside) == pytest.approx(4.0)
    # an object patch that puts 0.5 on its object and 0.5 elsewhere: 0.5 / 0.25
    mixed = torch.full((keys, keys), 0.5 / 12)
    mixed[:, inside] = 0.5 / 4
    assert own_object_ratio(mixed, inside) == pytest.approx(2.0)


def test_patch_masks_put_each_object_in_its_own_cells_at_the_attention_level():
    scene = world.scene_for("test", 3)
    for res in (8, 16):
        masks = _patch_masks(scene, res)
        assert set(masks) == {o.shape for o in scene.objects}
        for obj in scene.objects:
            m = masks[obj.shape]
            assert m.shape == (res, res) and m.any()
            rows, cols = np.nonzero(m)
            cx, cy = obj.center(res)  # (x, y): the object's centre at this level lies in its patches' box
            assert rows.min() - 1 <= cy <= rows.max() + 1 and cols.min() - 1 <= cx <= cols.max() + 1
        assert not np.any(sum(m.astype(int) for m in masks.values()) > 1)  # objects never share a patch


def test_object_attention_target_spreads_a_row_over_its_own_segment_by_distance():
    """Hand-worked: left half an object, right half background, a 2x2 level (cells of 32 px), sigma
    32 px.  The top-left patch's row: itself 1, the patch below it (same object, one cell away)
    exp(-1/2), the background patches 0; normalised."""
    from editnb.toy.tasks import object_attention_target

    seg = torch.zeros(1, 64, 64, dtype=torch.long)
    seg[:, :, :32] = 1
    target = object_attention_target(seg, 2, sigma=32.0)[0]
    w = float(np.exp(-0.5))
    assert torch.allclose(target[0], torch.tensor([1, 0, w, 0]) / (1 + w), atol=1e-6)
    assert torch.allclose(target[1], torch.tensor([0, 1, 0, w]) / (1 + w), atol=1e-6)  # background likewise
    assert torch.allclose(target.sum(-1), torch.ones(4))


def test_object_attention_target_without_sigma_is_uniform_over_the_own_segment():
    from editnb.toy.tasks import object_attention_target

    seg = torch.zeros(1, 64, 64, dtype=torch.long)
    seg[:, :, :32] = 1
    target = object_attention_target(seg, 2)[0]
    assert torch.equal(target, torch.tensor([[0.5, 0, 0.5, 0], [0, 0.5, 0, 0.5]] * 2)[[0, 1, 0, 1]])


def test_object_attention_loss_averages_the_rows_kl_by_segment_then_by_image():
    """Zero at the target; for uniform attention, by hand: image 0 has an object of 4 of 16 patches
    (rows KL log(16/4)) and 12 background patches (log(16/12)): (log 4 + log 4/3) / 2, not the row
    mean (4 log 4 + 12 log 4/3) / 16; image 1 is all background (log 1 = 0); the batch mean of both."""
    from editnb.toy.tasks import object_attention_loss, object_attention_target

    seg = torch.zeros(2, 64, 64, dtype=torch.long)
    seg[0, 16:48, 16:48] = 1  # the 2x2 centre patches of a 4x4 level
    target = object_attention_target(seg, 4)
    assert object_attention_loss(target, seg).abs() < 1e-6
    uniform = torch.full_like(target, 1 / 16)
    expected = (float(np.log(4)) + float(np.log(4 / 3))) / 2 / 2
    assert torch.allclose(object_attention_loss(uniform, seg), torch.tensor(expected), atol=1e-6)


def test_sd_task_trains_only_the_named_modules_and_the_objective_reads_only_those():
    """train_only: every trained parameter sits in a matched module (the 16x16 decoder self-attention
    here), so the 8x8 maps and the weights the other toy models build on stay as shipped; the
    objective records only the trained self-attention layers; bad settings are refused by name."""
    from editnb.models import models_dir
    from editnb.toy.train import TASKS, recipe_for

    r = recipe_for("sd", steps=1, batch_size=2, init=str(models_dir() / "toy-sd"),
                   options={"object_attention": 1.0, "train_only": ["up_blocks.1.*.attn1"]})
    task = TASKS["sd"]("cpu", r, 0, **r.options)
    trained = [n for n, p in task.unet.named_parameters() if p.requires_grad]
    assert trained and all(n.startswith("up_blocks.1.") and ".attn1." in n for n in trained)
    assert len(task.trained) == 2  # the two decoder attentions of the 16x16 level
    images, captions, segments, words = task.data_fn(0, 2, 0)
    assert segments.shape == (2, 64, 64) and [len(w) for w in words] == [int(s.max()) for s in segments]
    loss = task.loss((images, captions, segments, words), torch.Generator().manual_seed(0))
    loss.backward()
    assert all(p.grad is not None for p in task.unet.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match=r"object_attention and word_attention must be >= 0 and attention_sigma > 0 \(or None\)"):
        TASKS["sd"]("cpu", r, 0, object_attention=-1.0)
    with pytest.raises(ValueError, match=r"no module of the UNet matches \['up_blocks.7.\*'\]; its attention modules are"):
        TASKS["sd"]("cpu", r, 0, train_only=["up_blocks.7.*"])


def test_attention_objective_reads_only_items_below_attention_max_t():
    """The self-attention term averages object_attention_loss over the items with t < attention_max_t T
    (one item at t = 100 and one at 900 of T = 1000: 0.5 keeps the first, 0.95 both), and a share
    outside (0, 1] is refused."""
    from types import SimpleNamespace

    from editnb.models import models_dir
    from editnb.toy.tasks import object_attention_loss
    from editnb.toy.train import TASKS, recipe_for

    r = recipe_for("sd", steps=1, batch_size=2, init=str(models_dir() / "toy-sd"), options={"object_attention": 1.0})
    segments = torch.zeros(2, 64, 64, dtype=torch.long)
    segments[:, 8:40, 8:40] = 1
    probs = torch.softmax(torch.randn(2, 256, 256, generator=torch.Generator().manual_seed(0)), -1)
    store = SimpleNamespace(maps={("up.attn1", 0): probs}, sites={"up.attn1": SimpleNamespace(kind="self")})
    t = torch.tensor([100, 900])
    for max_t, kept in ((0.5, [0]), (0.95, [0, 1])):
        task = TASKS["sd"]("cpu", r, 0, object_attention=1.0, attention_max_t=max_t)
        got = task._attention_terms(store, t, segments, [[], []])
        assert torch.allclose(got, object_attention_loss(probs[kept], segments[kept])), max_t
    with pytest.raises(ValueError, match=r"attention_max_t is the share of the noise schedule .* in \(0, 1\]; got 1.5"):
        TASKS["sd"]("cpu", r, 0, attention_max_t=1.5)


def test_word_attention_loss_is_kl_from_the_objects_mask_to_its_words_map():
    """Hand-worked: a 2x2 level, object 1 the left column; its word attends to the patches with
    weights (3, 1, 3, 1) -> the normalised column (3/8, 1/8, 3/8, 1/8); the mask's distribution
    (1/2, 0, 1/2, 0); KL = log((1/2) / (3/8)) = log(4/3).  A dropped caption (None) adds nothing."""
    from editnb.toy.tasks import word_attention_loss

    seg = torch.zeros(2, 64, 64, dtype=torch.long)
    seg[:, :, :32] = 1
    probs = torch.full((2, 4, 5), 0.1)
    probs[0, :, 2] = torch.tensor([0.3, 0.1, 0.3, 0.1])
    loss = word_attention_loss(probs, seg, [[[2]], None])
    assert torch.allclose(loss, torch.tensor(float(np.log(4 / 3))))
    assert word_attention_loss(probs, seg, [None, None]) is None
