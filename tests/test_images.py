import numpy as np
import pytest
import torch
from PIL import Image

from editnb import images


def test_load_converts_everything_to_rgb(tmp_path):
    rgba = Image.new("RGBA", (10, 6), (255, 0, 0, 0))  # fully transparent -> white
    assert images.load_image(rgba).getpixel((0, 0)) == (255, 255, 255)
    grey = Image.new("L", (4, 4), 100)
    assert images.load_image(grey).mode == "RGB"
    pal = Image.new("P", (4, 4))
    assert images.load_image(pal).mode == "RGB"
    path = tmp_path / "x.png"
    Image.new("RGB", (5, 5), (1, 2, 3)).save(path)
    assert images.load_image(path).getpixel((2, 2)) == (1, 2, 3)
    assert images.load_image(np.zeros((3, 3), np.uint8)).size == (3, 3)
    assert images.to_numpy(np.ones((2, 2, 3), np.float32)).max() == 255


@pytest.mark.parametrize("bad, match", [
    ("missing.png", "does not exist"),
    (np.zeros((0, 5, 3), np.uint8), "empty"),
    (np.zeros((4, 4, 2), np.uint8), "shape"),
    (np.zeros((3, 8, 8), np.uint8), "channels-first"),
    (np.full((4, 4, 3), 7.0), r"\[0, 1\]"),
    (np.zeros((4, 4, 3), np.int32), "dtype"),
    (np.full((4, 4, 3), np.nan), "NaN"),
    (42, "cannot make an image"),
])
def test_bad_input_gets_a_clear_value_error(bad, match):
    with pytest.raises(ValueError, match=match):
        images.load_image(bad)


def test_unreadable_file(tmp_path):
    p = tmp_path / "broken.png"
    p.write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read"):
        images.load_image(p)


def test_fit_resizes_and_centre_crops():
    im = Image.new("RGB", (200, 100))
    im.paste((255, 0, 0), (50, 0, 150, 100))  # red centre square
    out = images.fit(im, 64)
    assert out.size == (64, 64)
    assert out.getpixel((32, 32)) == (255, 0, 0)
    with pytest.raises(ValueError, match="multiple of 8"):
        images.fit(im, 60)


def test_tensor_round_trip():
    arr = (np.arange(4 * 4 * 3) * 5 % 256).astype(np.uint8).reshape(4, 4, 3)
    t = images.pil_to_tensor(arr)
    assert t.shape == (1, 3, 4, 4) and t.min() >= -1 and t.max() <= 1
    assert np.array_equal(np.asarray(images.tensor_to_pil(t[0])), arr)
    assert len(images.tensor_to_pil(torch.zeros(2, 3, 4, 4))) == 2
    with pytest.raises(ValueError, match="expected a tensor"):
        images.tensor_to_pil(torch.zeros(5, 4, 4))


def test_grid_and_upscale():
    ims = [np.full((8, 8, 3), i * 40, np.uint8) for i in range(5)]
    fig = images.grid(ims, labels=[str(i) for i in range(5)], ncols=3)
    assert len(fig.axes) == 6 and fig.axes[0].get_title() == "0"
    assert images.upscale(ims[1], 64).size == (64, 64)
    with pytest.raises(ValueError):
        images.grid([])


def test_sample_photos_are_real_rgb_images():
    photos = images.sample_photos()
    assert set(photos) >= {"astronaut", "coffee"}
    assert all(p.mode == "RGB" and min(p.size) >= 256 for p in photos.values())


def test_overlay_draws_the_mask_on_a_grey_underlay_in_a_colour_of_its_own():
    from editnb import viz
    from editnb.toy import world

    edit = world.edit_for("test", 3, "recolor")
    img, mask = edit.source_image(), edit.mask()
    out = viz.overlay(img, mask)
    rest = out[~mask].astype(int)
    assert (rest[:, 0] == rest[:, 1]).all() and (rest[:, 1] == rest[:, 2]).all()  # grey outside the mask
    tinted = out[mask].astype(int)
    assert (tinted[:, 1] - tinted[:, 0] > 40).all()  # cyan-ish inside: green and blue well above red
    assert tuple(viz.MASK_COLOUR) not in {tuple(c) for c in world.COLORS.values()} | {tuple(c) for c in world.BACKGROUNDS.values()}
    with pytest.raises(ValueError, match="does not match"):
        viz.overlay(img, mask[:-1])


def test_mask_at_repeats_each_cell_when_upscaling_and_picks_the_cell_each_pixel_falls_in():
    from editnb.images import mask_at

    m = np.array([[1, 0], [0, 1]], bool)
    assert np.array_equal(mask_at(m, (4, 4)), np.kron(m, np.ones((2, 2), bool)))  # each cell 2x2
    # 3 pixels from 2 cells, nearest: pixel i takes cell floor(i * 2 / 3) -> cells 0, 0, 1
    assert np.array_equal(mask_at(m, (3, 3)), m[np.ix_([0, 0, 1], [0, 0, 1])])
    assert np.array_equal(mask_at(np.kron(m, np.ones((2, 2), bool)), (2, 2)), m)  # and back down
