"""What each chapter feeds its models, per profile: the only place where the chapters' cells differ.

On ``toy`` the inputs are ToyWorld scenes and edits, which carry exact masks and an oracle that reads
an image back into objects; on ``sd15`` (and ``sd15-shaped``, which takes the sd15 code path) they are
the bundled sample photographs (:func:`editnb.images.sample_photos`) with hand-written prompts, fitted
to the model's resolution, and no oracle.  A cell asks ``inputs.oracle`` before printing a number that
only the oracle can give, and reads every size from the model or the data, never from a constant.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np

from .images import fit, sample_photos
from .toy import oracle as toy_oracle, world

CHAPTERS = ("01", "02", "03", "04", "06")


@dataclass
class PhotoEdit:
    """A sample photograph with an edit's prompts: the part of a ToyWorld ``Edit`` that the chapters
    read (``source_image()``, captions, instruction, blend words).  A photo has no exact mask
    (``mask()`` is None) and no oracle; measure it with CLIP scores or CLIPSeg masks instead."""

    name: str
    image: np.ndarray
    source_caption: str
    target_caption: str
    instruction: str
    blend_words: tuple[str, str]
    kind: str = "photo"

    def source_image(self) -> np.ndarray:
        return self.image

    def mask(self):
        return None


#: per photograph: source caption, target caption, instruction, blend words (source word, target word)
PHOTO_EDITS = {
    "chelsea": ("a photo of a cat on a wooden floor", "a photo of a dog on a wooden floor",
                "turn the cat into a dog", ("cat", "dog")),
    "coffee": ("a cup of coffee on a red table", "a cup of tea on a red table", "make it a cup of tea",
               ("coffee", "tea")),
    "astronaut": ("a photo of an astronaut in front of a flag", "a photo of a robot in front of a flag",
                  "make the astronaut a robot", ("astronaut", "robot")),
    "rocket": ("a white rocket on a launch pad under a blue sky", "a white rocket on a launch pad under a red sky",
               "make the sky red", ("blue", "red")),
}


def photo_edits(resolution: int) -> list[PhotoEdit]:
    """The four sample photographs, centre-cropped to `resolution` (the model's), with their edits."""
    photos = sample_photos()
    return [PhotoEdit(name, np.asarray(fit(photos[name], resolution)), *prompts)
            for name, prompts in PHOTO_EDITS.items()]


class ChapterInputs(SimpleNamespace):
    """A chapter's inputs as attributes (which ones depends on the chapter), plus ``oracle``: the
    ToyWorld oracle module on toy, None on the photo profiles, and ``measures``: the columns that
    :meth:`measure` fills for an edited image."""

    def __init__(self, oracle=None, measures=(), **inputs):
        SimpleNamespace.__init__(self, **inputs)
        self.oracle, self.measures = oracle, tuple(measures)

    def measure(self, image, edit) -> dict:
        """What can be measured of `image` as an edit of `edit`: on toy the change outside the exact
        edit mask ("leak", grey levels) and whether the oracle reads the edit as done; on a photo, the
        mean change over the whole image ("change", grey levels), for want of a true mask."""
        if self.oracle is not None:
            return {"leak": float(self.oracle.change_outside(image, edit)),
                    "done": bool(self.oracle.edit_success(np.asarray(image), edit))}
        change = np.abs(np.asarray(image, float) - np.asarray(edit.source_image(), float)).mean()
        return {"change": float(change)}


def chapter_inputs(rt, chapter: str, resolution: int) -> ChapterInputs:
    """Chapter `chapter`'s inputs on `rt`'s profile; photos are fitted to `resolution`, the model's
    (``editnb.images.model_resolution(pipe)``).  ToyWorld's renders keep their own size."""
    if chapter not in CHAPTERS:
        raise ValueError(f"no inputs are defined for chapter {chapter!r}; chapters with inputs: {list(CHAPTERS)}")
    toy = rt.profile == "toy"
    return (_TOY if toy else _PHOTO)[chapter](resolution)


def _toy_01(resolution):
    inversion = world.scene_for("test", 5)

    def focus(image):  # the generated circle's centre, as the oracle reads it
        circle = next(d for d in toy_oracle.read(image).objects if d.shape == "circle")
        return tuple(int(v) for v in circle.centroid)

    return ChapterInputs(
        oracle=toy_oracle, image=world.render(world.scene_for("test", 2)),
        caption="a red circle and a blue square on a white background",
        target="a green circle and a blue square on a white background",
        words=["red", "circle", "blue", "square", "background"], subject="circle", focus=focus,
        # a caption where the guidance scale changes what the oracle reads (test scene 40010: 2, 5 and 7 of
        # 8 seeds read at g = 1, 3 and 7.5, found by measuring 20 captions); the chapter measures the
        # same on other captions, test scenes 41000+
        guidance_prompt=world.scene_for("test", 40_010).caption,
        guidance_held_out=[world.scene_for("test", 41_000 + i).caption for i in range(12)],
        refine=("a red circle on a white background", "a red circle and a blue square on a white background"),
        sdedit=world.edit_for("test", 1, "recolor"), ip2p=world.edit_for("test", 3, "recolor"),
        inversion=(world.render(inversion), inversion.caption), real=world.edit_for("test", 7, "recolor"))


def _photo_01(resolution):
    edits = {e.name: e for e in photo_edits(resolution)}
    return ChapterInputs(
        image=edits["chelsea"].image,
        caption="a red apple and a blue cup on a wooden table",
        target="a green apple and a blue cup on a wooden table",
        words=["red", "apple", "blue", "cup", "table"], subject="apple",
        focus=lambda image: (np.asarray(image).shape[1] // 2, np.asarray(image).shape[0] // 2),
        guidance_prompt="a yellow lemon on a gray table",
        refine=("a red apple on a wooden table", "a red apple and a blue cup on a wooden table"),
        sdedit=edits["chelsea"], ip2p=edits["coffee"],
        inversion=(edits["astronaut"].image, edits["astronaut"].source_caption), real=edits["rocket"])


def _toy_02(resolution):
    from .methods import iedit

    return ChapterInputs(
        oracle=toy_oracle, edit=world.edit_for("test", 30_001, kind="recolor"), editor="iedit", note="",
        captions=[world.scene_for("train", 5_000_000 + k).caption for k in range(5)],
        edit_prompt=iedit.toy_edit_prompt, models=("toy-sd", "toy-iedit"), runs=("SDEdit (toy-sd)", "iEdit", "iEdit-M"),
        pool_size=3000, paired_set=lambda features, clipseg: iedit.toy_paired_set(n=200, pool_size=3000, seed=1,
                                                                                  features=features, clipseg=clipseg))


IEDIT_NOTE = ("iEdit released no weights, so on this profile the chapter runs what can honestly run on SD 1.5: the "
              "paired-set code on the sample photographs (four photographs are no retrieval pool: the pairs only show "
              "the code path), the losses, a few fine-tuning steps of the same loop, and iEdit's inference, plain and "
              "masked (iEdit-M, Eq. 13, with a CLIPSeg mask), on the base model. Train your own weights with editnb.methods.iedit; the "
              "toy profile (EDITNB_PROFILE=toy) has a trained fine-tune and the oracle's numbers.")


def _photo_02(resolution):
    from .methods import iedit

    edits = photo_edits(resolution)
    prompts = {e.source_caption: e for e in edits}

    def edit_prompt(caption, rng):  # the photographs' hand-written edit prompts (WordNet may be absent offline)
        e = prompts[caption]
        return iedit.EditPrompt(caption, e.target_caption, *e.blend_words, relation="co-hyponym")

    def paired_set(features, clipseg):
        pool = np.stack([e.image for e in edits])
        return iedit.build_paired_set(features, clipseg, pool, [e.source_caption for e in edits], pool,
                                      np.random.default_rng(1), edit_prompt_fn=edit_prompt)

    return ChapterInputs(edit=edits[0], editor="sd", note=IEDIT_NOTE, captions=list(prompts), edit_prompt=edit_prompt,
                         models=("sd",), runs=("SDEdit (sd)", "iEdit (sd)", "iEdit-M (sd)"),
                         paired_set=paired_set)


def _toy_03(resolution):
    return ChapterInputs(oracle=toy_oracle, measures=("leak", "done"),
                         edits=[world.edit_for("test", i, kind="recolor") for i in range(8)])


def _photo_03(resolution):
    return ChapterInputs(measures=("change",), edits=photo_edits(resolution))


def _toy_04(resolution):
    # object edits (reshape and recolour) of held-out scenes: the blend word names one object, whose
    # exact mask is the grounding's answer
    edits = [world.edit_for("test", i, kind=k) for i in range(3) for k in ("reshape", "recolor")]
    return ChapterInputs(oracle=toy_oracle, measures=("leak", "done"), edits=edits, showcase=edits[0],
                         unrelated=world.render(world.scene_for("test", 30_000)))


def _photo_04(resolution):
    edits = photo_edits(resolution)
    return ChapterInputs(measures=("change",), edits=edits, showcase=edits[0], unrelated=edits[1].image)


def _toy_06(resolution):
    return ChapterInputs(oracle=toy_oracle, note="", editor_name="EditCLIP (toy)", control=True,
                         text_name="InstructPix2Pix, text (toy-ip2p)", change=toy_oracle.change_outside,
                         change_where="outside the edit mask")


EDITCLIP_NOTE = ("On this profile EditCLIP is the authors' release: the pair encoder QWW/EditCLIP, run on ToyWorld pairs "
                 "(CLIP's processor resizes them), and the exemplar editor QWW/EditCLIP-IP2P on ToyWorld queries. As in "
                 "every chapter the oracle's numbers are the toy profile's, changes are measured over the whole image, and "
                 "the lambda_2 ablation shown is the toy editor's.")


def _photo_06(resolution):
    def change(image, edit):  # as chapter 03 measures a photograph: the mean change over the whole image
        image = np.asarray(image, float)
        source = np.asarray(fit(edit.source_image(), image.shape[0]), float)  # the query as the model saw it
        return float(np.abs(image - source).mean())

    return ChapterInputs(note=EDITCLIP_NOTE, editor_name="EditCLIP (QWW/EditCLIP-IP2P)",
                         control=True, text_name="InstructPix2Pix, text (ip2p)", change=change,
                         change_where="over the whole image")


_TOY = {"01": _toy_01, "02": _toy_02, "03": _toy_03, "04": _toy_04, "06": _toy_06}
_PHOTO = {"01": _photo_01, "02": _photo_02, "03": _photo_03, "04": _photo_04, "06": _photo_06}


#: the course's chapters: title, what each teaches
CHAPTER_MAP = {
    "00": ("ToyWorld", "the synthetic world, its exact masks and oracle, and the toy models every chapter runs on"),
    "01": ("Foundations", "VAE, DDIM, classifier-free guidance, SDEdit, InstructPix2Pix, inversion, attention, "
                          "Prompt-to-Prompt"),
    "02": ("iEdit", "pseudo-paired data by retrieval, CLIPSeg masks, the fine-tuning loss (Eq. 2-12), masked inference "
                    "(Eq. 13)"),
    "03": ("LIME", "edit localisation by clustering the editor's features, attention regularisation (Eq. 3-4)"),
    "04": ("ViMAEdit", "image-embedding guidance (Eq. 7-8), iterative grounding (Eq. 9-10), adaptive variance "
                       "(Eq. 11-12)"),
    "05": ("UIP2P", "instruction editing learned from reversible edits alone (edit reversibility constraint)"),
    "06": ("EditCLIP", "an embedding of edits, retrieval, editing by example"),
    "07": ("Evaluation", "what PIE-Bench's and MagicBrush's metrics reward and miss, the toy benchmark, an Elo study"),
}


def chapter_map(notebooks=None) -> list[dict]:
    """One row per chapter: number, title, what it teaches, and how long its committed run took
    (from the notebook's execution timestamps, first cell started to last cell done; None when
    the notebook is not beside the package, as in a wheel install, or carries no timings)."""
    import json
    from datetime import datetime
    from pathlib import Path

    folder = Path(notebooks) if notebooks else Path(__file__).resolve().parents[1] / "notebooks"
    rows = []
    for number, (title, teaches) in CHAPTER_MAP.items():
        seconds = None
        found = sorted(folder.glob(f"{number}_*.ipynb")) if folder.is_dir() else []
        if found:
            stamps = [c.get("metadata", {}).get("execution", {}) for c in json.loads(found[0].read_text())["cells"]]
            started = [s["iopub.execute_input"] for s in stamps if "iopub.execute_input" in s]
            done = [s["shell.execute_reply"] for s in stamps if "shell.execute_reply" in s]
            if started and done:
                seconds = (datetime.fromisoformat(max(done).replace("Z", "+00:00"))
                           - datetime.fromisoformat(min(started).replace("Z", "+00:00"))).total_seconds()
        rows.append({"chapter": number, "title": title, "teaches": teaches, "seconds": seconds})
    return rows
