import numpy as np
import pytest

from editnb.toy import oracle, world
from editnb.toy.data import EditDataset, SceneDataset, collate


def scenes(n=60, split="test"):
    return [world.scene_for(split, i) for i in range(n)]


def test_scenes_are_deterministic_and_splits_disjoint():
    assert world.scene_for("train", 5) == world.scene_for("train", 5)
    train = {world.scene_for("train", i) for i in range(50)}
    test = {world.scene_for("test", i) for i in range(50)}
    assert len(train) > 40 and train != test
    assert np.array_equal(world.render(world.scene_for("val", 3)), world.render(world.scene_for("val", 3)))


def test_scene_rules_are_enforced():
    a = world.ToyObject("circle", "red", (0, 0))
    with pytest.raises(ValueError, match="share a shape"):
        world.Scene((a, world.ToyObject("circle", "blue", (1, 1))))
    with pytest.raises(ValueError, match="unknown colour"):
        world.ToyObject("circle", "teal", (0, 0))
    with pytest.raises(ValueError, match="unknown split"):
        world.scene_for("holdout", 0)


def test_caption_matches_scene():
    s = world.Scene((world.ToyObject("square", "blue", (0, 2)), world.ToyObject("circle", "red", (1, 0))), "white")
    assert s.caption == "a red circle and a blue square on a white background"
    three = world.Scene(s.objects + (world.ToyObject("triangle", "green", (2, 1)),), "black")
    assert three.caption == "a red circle, a green triangle and a blue square on a black background"
    for sc in scenes():
        parsed = world.parse_caption(sc.caption)
        assert world.scene_signature(parsed) == world.scene_signature(sc)


def test_masks_match_renders():
    for sc in scenes(30):
        img = world.render(sc).astype(int)
        for obj in sc.objects:
            m = world.object_mask(obj)
            assert m.sum() > 80  # a small triangle still has ~100 pixels
            # inside the mask, pixels are (close to) the object's colour
            inside = img[m]
            assert np.abs(inside - np.array(world.COLORS[obj.color])).max(1).mean() < 25
        bg = ~world.foreground_mask(sc)
        assert (img[bg] == np.array(world.BACKGROUNDS[sc.background])).all()


@pytest.mark.parametrize("kind", world.EDIT_KINDS)
def test_every_edit_kind(kind):
    for i in range(15):
        e = world.edit_for("test", i, kind)
        assert e.kind == kind
        assert e.source != e.target
        src, dst, mask = e.source_image(), e.edited_image(), e.mask()
        changed = (src != dst).any(-1)
        # every changed pixel is inside the exact edit mask, and the mask is not empty
        assert mask.any() and not (changed & ~mask).any()
        if kind != "move":
            assert e.source_caption != e.target_caption
        assert e.instruction and e.reverse_instruction and e.instruction != e.reverse_instruction
        # the reverse edit restores the source scene exactly
        r = e.reverse()
        assert r.target == e.source and r.source == e.target
        assert np.array_equal(r.edited_image(), src)
        assert r.reverse() == e


def test_edit_texts():
    s = world.Scene((world.ToyObject("circle", "red", (0, 0)),), "white")
    e = world.recolor(s, "circle", "blue")
    assert (e.instruction, e.reverse_instruction, e.blend_words) == (
        "make the circle blue", "make the circle red again", ("circle", "circle"))
    assert e.target_caption == "a blue circle on a white background"
    with pytest.raises(ValueError):
        world.random_edit(np.random.default_rng(0), world.Scene((), "white"), "remove")


def test_oracle_is_exact_on_clean_renders():
    for sc in scenes(200):
        img = world.render(sc)
        r = oracle.read(img)
        assert r.signature(positions=True) == world.scene_signature(sc, positions=True), (sc, r)
        assert oracle.caption_agreement(img, sc.caption)
    for i in range(60):
        e = world.edit_for("test", i)
        assert oracle.edit_success(e.edited_image(), e)
        assert oracle.preservation(e.edited_image(), e) == float("inf")


def test_oracle_on_perturbed_images():
    rng = np.random.default_rng(0)
    ok = 0
    for sc in scenes(100):
        img = world.render(sc).astype(float) + rng.normal(0, 12, (64, 64, 3))
        ok += oracle.matches(np.clip(img, 0, 255).astype(np.uint8), sc, positions=True)
    assert ok >= 95
    # wrong images are rejected: a different colour, a missing object
    e = world.edit_for("test", 0, "recolor")
    assert not oracle.edit_success(e.source_image(), e)
    assert not oracle.caption_agreement(world.render(world.Scene((), "white")), "a red circle on a white background")
    with pytest.raises(ValueError, match="not a ToyWorld caption"):
        oracle.caption_agreement(e.source_image(), "a dog")


def test_datasets():
    ds = SceneDataset("val", size=4)
    batch = collate([ds[i] for i in range(4)])
    assert batch["image"].shape == (4, 3, 64, 64) and batch["image"].min() >= -1
    assert batch["mask"].shape == (4, 3, 64, 64)
    eds = EditDataset("val", size=3, kind="recolor")
    item = eds[0]
    assert item["kind"] == "recolor" and item["source"].shape == item["edited"].shape
    with pytest.raises(IndexError):
        ds[4]


@pytest.mark.parametrize("batch_size", [1, 8, 32, 33])
def test_edit_batch_kind_share_is_exact(batch_size):
    """IP2P training's ``kind_share`` option: round(share * B) items of the named kind, the rest
    ToyWorld's own mix (so the option only ever adds to a kind, never removes one)."""
    from editnb.toy.tasks import _batch_kinds, edit_batch

    kinds = _batch_kinds(batch_size, {"add": 0.35, "remove": 0.1})
    assert kinds.count("add") == round(0.35 * batch_size)
    assert kinds.count("remove") == round(0.1 * batch_size)
    assert kinds.count(None) == batch_size - kinds.count("add") - kinds.count("remove")
    if batch_size == 8:
        src, tgt, instructions = edit_batch(0, batch_size, seed=0, kind_share={"add": 0.5})
        assert src.shape == tgt.shape and len(instructions) == batch_size
        assert all(text.startswith("add ") for text in instructions[:4])


@pytest.mark.parametrize("share, message", [({"paint": 0.2}, "unknown edit kinds"),
                                            ({"add": 1.5}, "share in"), ({"add": 0.6, "move": 0.6}, "summing")])
def test_edit_batch_refuses_a_bad_kind_share(share, message):
    from editnb.toy.tasks import _batch_kinds

    with pytest.raises(ValueError, match=message):
        _batch_kinds(8, share)


def test_rewriting_a_card_keeps_its_history(tmp_path):
    """`editnb toy eval --update-cards` rebuilds a card from training.json; a hand-written history
    of earlier runs cannot be rebuilt, so it must survive the rewrite (and a new card has none)."""
    from editnb.toy.cards import write_card

    summary = {"model": "iedit", "steps": 10, "seed": 0, "train_seconds": 60.0, "device": "cpu", "final_loss": 0.5,
               "recipe": {"batch_size": 4, "lr": 1e-4, "warmup": 2}}
    write_card(tmp_path, summary, {"iedit_success": 0.5})
    first = (tmp_path / "README.md").read_text()
    assert "## History" not in first and "iedit_success: 0.5" in first
    history = "## History\n\nAn earlier run: 1100 steps on a GPU, success 0.667.\n"
    (tmp_path / "README.md").write_text(first + "\n" + history)
    write_card(tmp_path, {**summary, "steps": 20}, {"iedit_success": 0.7})
    card = (tmp_path / "README.md").read_text()
    assert "steps: 20" in card and "iedit_success: 0.7" in card and "iedit_success: 0.5" not in card
    assert card.rstrip().endswith(history.rstrip()) and card.count("## History") == 1
