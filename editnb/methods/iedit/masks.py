"""Where iEdit edits: the difference prompts y_1^diff / y_2^diff (Sec. 3.4) and their CLIPSeg masks,
for the training set (M_1, M_2) and for iEdit-M at inference."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F



#: closed-class English words (articles, prepositions, pronouns, conjunctions, auxiliaries): never
#: edited, never a noun phrase's head ("on" -> "off" is not an edit of the picture)
STOP_WORDS = frozenset("""a an the this that these those some any each every no and or but nor of on in at to
from by with without into onto over under above below behind beside between near next through across along around
against for about up down out off is are was were be been being has have had it its their his her our your my he she
they we you i there here as than then very""".split())


def is_content(word: str) -> bool:
    """A word an edit may change: alphabetic and not a stop word."""
    w = word.strip(".,;:!?").lower()
    return w.isalpha() and w not in STOP_WORDS


def caption_roles(words: list[str]) -> list[str | None]:
    """Each word's part in its noun phrase, from the caption alone (no tagger, no data): None for
    stop words and non-words; "a" (modifier) for a content word followed by another content word
    ("red" in "a red car", "small" in "a small dog", even though both also have noun senses);
    "n" (head noun) for the last content word of a phrase."""
    content = [is_content(w) for w in words]
    return [None if not c else ("a" if k + 1 < len(words) and content[k + 1] and not words[k].endswith(",") else "n")
            for k, c in enumerate(content)]


def difference_prompts(caption: str, prompt: str) -> tuple[str, str]:
    """(y_1^diff, y_2^diff) of Sec. 3.4: the words where caption and edit prompt differ, each with
    the noun it describes when it is an adjective ('red circle' / 'blue circle', 'circle' / 'square',
    'white background' / 'gray background').  Empty when one side only adds words."""
    import difflib

    a, b = caption.replace(",", "").split(), prompt.replace(",", "").split()
    out = [[], []]
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if tag == "equal":
            continue
        for side, (words, lo, hi) in enumerate(((a, i1, i2), (b, j1, j2))):
            span = words[lo:hi]
            if span and hi < len(words) and caption_roles(words[lo:hi + 1])[-2] == "a":
                span = span + [words[hi]]
            out[side] += span
    return " ".join(out[0]), " ".join(out[1])


@torch.no_grad()
def clipseg_masks(clipseg, images, texts, threshold: float = 0.5, batch_size: int = 64) -> np.ndarray:
    """Boolean masks (B, H, W) at the images' size for text queries (CLIPSeg, thresholded
    probabilities).  `clipseg` is the ``(model, processor)`` pair of ``load("clipseg")``; an empty
    query gives an empty mask."""
    from ...images import to_numpy

    model, processor = clipseg
    arrays = [to_numpy(im) for im in images]
    texts = list(texts)
    if len(arrays) != len(texts):
        raise ValueError(f"clipseg_masks needs one query per image, got {len(arrays)} images and {len(texts)} queries")
    out = np.zeros((len(arrays),) + arrays[0].shape[:2], bool) if arrays else np.zeros((0, 0, 0), bool)
    for lo in range(0, len(arrays), batch_size):
        chunk, queries = arrays[lo:lo + batch_size], texts[lo:lo + batch_size]
        inputs = processor(text=[q or "nothing" for q in queries], images=chunk, padding="max_length",
                           return_tensors="pt")
        inputs = {k: v.to(model.device) for k, v in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
        logits = model(**inputs).logits.float()
        logits = logits.reshape(len(chunk), *logits.shape[-2:])
        probs = F.interpolate(logits[:, None].sigmoid(), size=chunk[0].shape[:2], mode="bilinear",
                              align_corners=False)[:, 0].cpu().numpy()
        out[lo:lo + len(chunk)] = (probs > threshold) & np.array([bool(q) for q in queries])[:, None, None]
    return out


def mask_for_item(clipseg, image, source_prompt: str, target_prompt: str):
    """iEdit-M's inference mask: CLIPSeg of the source on y_1^diff (or on y_2^diff when the edit
    only adds words); None when CLIPSeg finds nothing, and the edit runs unmasked."""
    y1, y2 = difference_prompts(source_prompt, target_prompt)
    query = y1 or " ".join(w for w in y2.split() if w not in ("a", "an", "and", "the"))
    if not query:
        return None
    mask = clipseg_masks(clipseg, [image], [query])[0]
    return mask if mask.any() else None
