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
