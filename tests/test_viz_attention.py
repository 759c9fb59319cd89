"""The attention pictures keep maps and masks apart from image content: masks in a colour outside
the ToyWorld palette over greyscale, maps over greyscale with a colourbar."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from editnb.toy import world  # noqa: E402
from editnb.viz import attention as vattn  # noqa: E402


def test_mask_colour_is_outside_the_toyworld_palette():
    palette = np.array(list(world.COLORS.values()) + list(world.BACKGROUNDS.values()), float)
    assert np.abs(palette - np.array(vattn.MASK_COLOUR, float)).sum(-1).min() > 150


def test_mask_on_grey_tints_only_the_mask_and_greys_the_rest():
    scene = world.scene_for("train", 3)
    image = world.render(scene)
    mask = next(iter(world.object_masks(scene).values()))
    out = vattn.mask_on_grey(image, mask)
    assert out.shape == image.shape and out.dtype == np.uint8
    outside = out[~mask].astype(int)
    assert (outside[:, 0] == outside[:, 1]).all() and (outside[:, 1] == outside[:, 2]).all()  # grey
    inside = out[mask].astype(int)
    assert (inside[:, 1] - inside[:, 0] > 100).all() and (inside[:, 2] - inside[:, 0] > 100).all()  # cyan


def test_mask_on_grey_takes_a_mask_of_another_size():
    image = np.zeros((12, 12, 3), np.uint8)
    coarse = np.zeros((3, 3), bool)
    coarse[0, 0] = True
    out = vattn.mask_on_grey(image, coarse)
    tinted = out[..., 2] > out[..., 0]
    assert tinted[:4, :4].all() and tinted.sum() == 16


def test_comparison_shows_the_mask_share_even_for_a_full_mask():
    a = np.zeros((8, 8, 3), np.uint8)
    fig = vattn.comparison(a, a + 10, mask=np.ones((4, 4), bool))
    assert "100%" in fig.axes[3].get_title()
    assert len(fig.axes) == 5  # four panels and the difference's colourbar
    plt.close(fig)


def test_cross_attention_row_draws_maps_over_grey_with_a_colourbar():
    image = np.full((8, 8, 3), (220, 40, 40), np.uint8)
    maps = {"red": np.eye(4), "circle": np.ones((4, 4)) * 0.5}
    fig = vattn.cross_attention_row(image, maps)
    assert len(fig.axes) == 1 + len(maps) + 1
    underlay = fig.axes[1].get_images()[0]
    assert underlay.get_cmap().name == "gray"
    plt.close(fig)


def test_guidance_grid_notes_need_one_line_per_panel():
    images = [np.zeros((4, 4, 3), np.uint8)] * 4
    fig = vattn.guidance_grid(images, [1, 2], [1, 2], notes=["a", "b", "c", "d"])
    assert fig.axes[3].get_xlabel() == "d"
    plt.close(fig)
    with pytest.raises(ValueError, match="one line per image"):
        vattn.guidance_grid(images, [1, 2], [1, 2], notes=["a"])
    # with the input in a column of its own: the grid keeps its labels, the input heads the first column
    source = np.full((4, 4, 3), 200, np.uint8)
    fig = vattn.guidance_grid(images, [1, 2], [1, 2], notes=["a", "b", "c", "d"], source=source, title="make it red")
    assert fig.axes[0].get_title() == "input" and not fig.axes[3].axison  # below the input: nothing
    assert fig.axes[1].get_title() == "s_I=1" and fig.axes[1].get_ylabel() == "s_T=1" and fig.axes[5].get_xlabel() == "d"
    assert fig._suptitle.get_text() == "make it red"
    plt.close(fig)


def test_changes_against_draws_where_each_variant_differs_from_the_reference():
    ref = np.zeros((8, 8, 3), np.uint8)
    moved = ref.copy()
    moved[2:4, 2:4] = 90
    fig = vattn.changes_against(ref, {"a": ref, "b": moved}, reference_label="zero")
    diff_b = fig.axes[5].get_images()[0].get_array()  # row 2, column 3: |b - zero|
    assert diff_b[2:4, 2:4].min() == 90 and diff_b.sum() == 90 * 4
    assert fig.axes[4].get_images()[0].get_array().max() == 0  # |a - zero|: nothing
    plt.close(fig)
    with pytest.raises(ValueError, match="resize it first"):
        vattn.changes_against(ref, {"small": np.zeros((4, 4, 3), np.uint8)})


def test_iou_per_step_draws_the_mean_of_each_method_at_its_steps():
    ious = {"a": np.array([[0.2, 0.4], [0.4, 0.6]]), "b": np.array([[0.1, 0.1], [0.3, 0.3]])}
    fig = vattn.iou_per_step(ious, first_step=4, steps=10)
    lines = fig.axes[0].get_lines()
    assert list(lines[0].get_xdata()) == [5, 6] and np.allclose(lines[0].get_ydata(), [0.3, 0.5])
    assert np.allclose(lines[1].get_ydata(), [0.2, 0.2])
    plt.close(fig)


def test_threshold_masks_report_share_and_iou_of_each_cut():
    import matplotlib

    matplotlib.use("Agg")
    from editnb.viz.attention import threshold_masks

    image = np.zeros((8, 8, 3), np.uint8)
    value = np.zeros((4, 4), np.float32)
    value[:2, :2] = 1.0   # the top-left quarter, strongly
    value[2:, :] = 0.5    # the bottom half, weakly
    exact = np.zeros((8, 8), bool)
    exact[:4, :4] = True
    fig, found = threshold_masks(image, value, (0.3, 0.7), exact=exact)
    assert found[0.3] == (0.75, pytest.approx(1 / 3))  # quarter + half; IoU 16 / 48
    assert found[0.7] == (0.25, 1.0)
    assert len(fig.axes) == 3 + 1  # map, two masks, the colourbar


def test_segments_are_drawn_over_grey_with_white_borders():
    from editnb.viz import SEGMENT_COLOURS, segments_overlay

    image = np.zeros((8, 8, 3), np.uint8)
    image[..., 1] = 200  # a saturated green image: its colour must not survive under the segments
    segments = np.zeros((4, 4), int)
    segments[:, 2:] = 1
    out = segments_overlay(image, segments, alpha=0.5).astype(int)
    grey = round(200 * 0.587)
    assert np.allclose(out[0, 0], 0.5 * grey + 0.5 * SEGMENT_COLOURS[0], atol=1)   # segment 0 over grey
    assert np.allclose(out[0, 7], 0.5 * grey + 0.5 * SEGMENT_COLOURS[1], atol=1)   # segment 1 over grey
    assert (out[:, 4] == 255).all() and (out[:, 3] != 255).any()  # the border, where the label changes


def test_frontend_detection_counts_subclasses_of_the_kernel_shell(monkeypatch):
    """Colab's shell is `class Shell(ZMQInteractiveShell)`: a subclass is a kernel with a frontend;
    a terminal IPython is not; EDITNB_STATIC=1 forces the static path."""
    import IPython
    from ipykernel.zmqshell import ZMQInteractiveShell

    from editnb.viz.attention import _frontend_available

    class Shell(ZMQInteractiveShell):  # the shape of google.colab._shell.Shell
        pass

    colab_like = Shell.__new__(Shell)  # no kernel behind it: only its type is read
    monkeypatch.delenv("EDITNB_STATIC", raising=False)
    monkeypatch.setattr(IPython, "get_ipython", lambda: colab_like)
    assert _frontend_available()
    monkeypatch.setattr(IPython, "get_ipython", lambda: object())
    assert not _frontend_available()
    monkeypatch.setattr(IPython, "get_ipython", lambda: None)
    assert not _frontend_available()
    monkeypatch.setattr(IPython, "get_ipython", lambda: colab_like)
    monkeypatch.setenv("EDITNB_STATIC", "1")
    assert not _frontend_available()


def test_explorer_numbers_repeated_words_so_each_occurrence_is_its_own_option():
    tokens = [("a", [1]), ("red", [2]), ("circle", [3]), ("and", [4]), ("a", [5]), ("blue", [6, 7])]
    options = vattn.explorer_words(tokens)
    assert options == [("a (1)", 0), ("red", 1), ("circle", 2), ("and", 3), ("a (2)", 4), ("blue", 5)]
    assert len({value for _, value in options}) == len(tokens)  # no two labels share a map


@pytest.mark.parametrize("sides, grounded", [((16, 8), 8), ((64, 32, 16, 8), 16), ((24, 12, 6, 3), 6)])
def test_explorer_opens_on_the_level_a_quarter_of_the_latent_side(sides, grounded):
    """toy-sd: 8x8 of 16; SD 1.5: 16x16 of 64 (P2P's blend level); sd15-shaped: 6x6 of 24."""
    from types import SimpleNamespace

    sites = {f"block{k}.attn2.processor": SimpleNamespace(resolution=r, kind="cross") for k, r in enumerate(sides)}
    store = SimpleNamespace(sites=sites, layers=lambda kind: list(sites))
    assert store.sites[vattn.grounded_layer(store)].resolution == grounded


def test_grid_explorer_needs_every_pair_of_the_grid_and_is_drawn_static_without_a_frontend(monkeypatch):
    """Without a frontend the explorer is drawn as it opens (the chosen pair's image and note, the
    sliders' values as text) and returns None."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = {(a, b): np.full((8, 8, 3), int(10 * a + b), np.uint8) for a in (1.0, 7.0) for b in (0.5, 1.5)}
    monkeypatch.setenv("EDITNB_STATIC", "1")
    shown = []
    monkeypatch.setattr(plt, "show", lambda: shown.append(plt.gcf()))
    assert vattn.grid_explorer(images, (1.0, 7.0), (0.5, 1.5), value=(7.0, 0.5), notes={k: "n" for k in images}) is None
    (fig,) = shown
    ax = fig.axes[0]
    assert ax.get_title() == "s_E=7.0, s_I=0.5\nn" and (ax.images[0].get_array() == 70).all()
    assert "explorer: s_E [1.0, 7.0], s_I [0.5, 1.5]" in fig.texts[0].get_text()
    plt.close("all")
    with pytest.raises(ValueError, match=r"no result for \[\(12.0, 0.5\)"):
        vattn.grid_explorer(images, (1.0, 7.0, 12.0), (0.5, 1.5))
