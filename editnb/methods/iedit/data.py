"""iEdit's paired dataset (Sec. 3.1): caption -> edit prompt (one adjective or noun replaced by an
antonym or a co-hyponym) -> pseudo-target = nearest neighbour of the MEAN of the CLIP image
embedding of the source and the CLIP text embedding of the edit prompt; with CLIPSeg masks of the
difference prompts (Sec. 3.4)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ...toy import world
from .masks import caption_roles, clipseg_masks, difference_prompts


#: ToyWorld's lexicon, arranged as WordNet would: words under one hypernym are co-hyponyms.
TOY_LEXICON = {
    "color": tuple(world.COLORS),
    "shape": world.SHAPES,
    "background color": tuple(world.BACKGROUNDS),
}


@dataclass(frozen=True)
class EditPrompt:
    caption: str
    prompt: str
    old: str
    new: str
    relation: str  # "co-hyponym" or "antonym"

    @property
    def difference(self) -> str:
        """y_2^diff: the changed word, with the noun it describes when it is an adjective."""
        return difference_prompts(self.caption, self.prompt)[1]

    @property
    def source_difference(self) -> str:
        """y_1^diff: the replaced word of the caption, with its noun when it is an adjective."""
        return difference_prompts(self.caption, self.prompt)[0]




def toy_edit_prompt(caption: str, rng: np.random.Generator) -> EditPrompt:
    """Replace one colour, shape or background word of a ToyWorld caption by a co-hyponym that
    is not already in the caption (so the edit prompt still describes a valid ToyWorld scene)."""
    words = caption.split()
    present = set(w.strip(",") for w in words)
    candidates = []
    for k, w in enumerate(words):
        bare = w.strip(",")
        is_bg = k + 1 < len(words) and words[k + 1] == "background"
        group = "background color" if is_bg else next((g for g, ws in TOY_LEXICON.items() if bare in ws and g != "background color"), None)
        if group is None:
            continue
        options = [o for o in TOY_LEXICON[group] if o not in present]
        if options:
            candidates.append((k, bare, options))
    if not candidates:
        raise ValueError(f"no colour, shape or background word of {caption!r} has a free co-hyponym")
    k, old, options = candidates[int(rng.integers(len(candidates)))]
    new = options[int(rng.integers(len(options)))]
    words[k] = words[k].replace(old, new)
    return EditPrompt(caption, " ".join(words), old, new, "co-hyponym")


def wordnet_edit_prompt(caption: str, rng: np.random.Generator) -> EditPrompt:
    """The sd15 recipe: replace an adjective by an antonym (or, for a colour-like adjective with
    none, by a sibling under the same head adjective) or a noun by a random co-hyponym (a sibling
    under one of its hypernyms), with WordNet (nltk).  Only content words are candidates, each in
    its role in the caption (:func:`masks.caption_roles`): "red" in "a red car" is an adjective
    although WordNet also knows the noun; "on" is never replaced by "off"."""
    try:
        from nltk.corpus import wordnet as wn

        wn.ensure_loaded()
    except (ImportError, LookupError) as e:
        raise RuntimeError("edit prompts for real captions use WordNet, whose data no PyPI package ships: "
                           "pip install nltk, then python -c \"import nltk; nltk.download('wordnet')\" (once, with "
                           "network; NLTK_DATA sets where it goes), or use the toy profile, whose lexicon is "
                           "built in") from e
    words = caption.split()
    roles = caption_roles([w.strip(".,") for w in words])
    for k in rng.permutation(len(words)):
        if roles[k] is None:
            continue
        w = words[k].strip(".,").lower()
        found = _adjective_swap(wn, w, rng) if roles[k] == "a" else _noun_swap(wn, w, rng)
        if found:
            new, relation = found
            return EditPrompt(caption, " ".join(words[:k] + [new] + words[k + 1:]), w, new, relation)
    raise ValueError(f"no adjective or noun of {caption!r} has an antonym or co-hyponym in WordNet")


def _lemma(synset) -> str:
    return synset.lemmas()[0].name().replace("_", " ")


def _adjective_swap(wn, word: str, rng):
    synsets = wn.synsets(word, pos=wn.ADJ)  # satellites ("s") included
    for syn in synsets:
        for lemma in syn.lemmas():
            if lemma.antonyms():
                return lemma.antonyms()[0].name().replace("_", " "), "antonym"
    for syn in synsets:  # "red" has no antonym: a sibling under its head adjective ("chromatic")
        siblings = [s for head in syn.similar_tos() for s in head.similar_tos() if s != syn and _lemma(s) != word]
        if siblings:
            return _lemma(siblings[int(rng.integers(len(siblings)))]), "co-hyponym"
    return None


def _noun_swap(wn, word: str, rng):
    for syn in wn.synsets(word, pos=wn.NOUN):
        siblings = [s for h in syn.hypernyms() for s in h.hyponyms() if s != syn and _lemma(s) != word]
        if siblings:
            return _lemma(siblings[int(rng.integers(len(siblings)))]), "co-hyponym"
    return None


def retrieve_pseudo_targets(features, source_images, edit_prompts, pool_images, exclude=None, k: int = 1):
    """Indices of the pool images nearest (cosine) to the MEAN of each source's CLIP image
    embedding and its edit prompt's CLIP text embedding (Sec. 3.1).  `exclude[i]` (optional) is a
    pool index that source i must not retrieve (itself, when the pool contains the sources)."""
    img = features.images(list(source_images))
    txt = features.texts(list(edit_prompts))
    query = F.normalize((img + txt) / 2, dim=-1)
    pool = pool_images if isinstance(pool_images, torch.Tensor) else features.images(list(pool_images))
    sims = query @ F.normalize(pool, dim=-1).T
    if exclude is not None:
        for i, j in enumerate(exclude):
            if j is not None:
                sims[i, j] = -float("inf")
    top = sims.topk(k, dim=-1).indices.cpu().numpy()
    return top[:, 0] if k == 1 else top


@dataclass
class PairedSet:
    """Sec. 3.1 + 3.4: sources x_1, pseudo-targets x_2 (uint8), captions y_1, edit prompts y_2,
    difference prompts, CLIPSeg masks M_1, M_2 (bool, image size), and the pool index of x_2."""

    sources: np.ndarray
    targets: np.ndarray
    captions: list
    prompts: list
    source_differences: list
    target_differences: list
    m1: np.ndarray
    m2: np.ndarray
    target_index: np.ndarray

    def __len__(self):
        return len(self.captions)

    def batch(self, idx):
        """Items `idx` as training tensors: x_1, x_2 (B, 3, H, W) in [-1, 1], M_1, M_2 (B, 1, H, W),
        edit prompts y_2 and target difference prompts y_2^diff (the edit prompt where it is empty)."""
        from ...toy.data import to_tensor

        idx = np.asarray(idx)
        images = lambda a: torch.stack([to_tensor(x) for x in a[idx]])  # noqa: E731
        masks = lambda m: torch.from_numpy(m[idx]).float()[:, None]      # noqa: E731
        return (images(self.sources), images(self.targets), masks(self.m1), masks(self.m2),
                [self.prompts[i] for i in idx], [self.target_differences[i] or self.prompts[i] for i in idx])


def build_paired_set(features, clipseg, sources, captions, pool, rng: np.random.Generator,
                     edit_prompt_fn=toy_edit_prompt, pool_features=None) -> PairedSet:
    """Caption -> edit prompt -> pseudo-target retrieved by the mean embedding -> CLIPSeg masks of
    the difference prompts on source and pseudo-target.  `pool` is a uint8 array (P, H, W, 3)."""
    edits = [edit_prompt_fn(c, rng) for c in captions]
    prompts = [e.prompt for e in edits]
    if pool_features is None:
        pool_features = _image_features(features, pool)
    idx = retrieve_pseudo_targets(features, list(sources), prompts, pool_features)
    targets = np.asarray(pool)[idx]
    diffs = [difference_prompts(c, p) for c, p in zip(captions, prompts)]
    m1 = clipseg_masks(clipseg, list(sources), [d[0] for d in diffs])
    m2 = clipseg_masks(clipseg, list(targets), [d[1] for d in diffs])
    return PairedSet(np.asarray(sources), targets, list(captions), prompts, [d[0] for d in diffs],
                     [d[1] for d in diffs], m1, m2, idx)


def _image_features(features, images, batch_size: int = 256) -> torch.Tensor:
    return torch.cat([features.images(list(images[i:i + batch_size])) for i in range(0, len(images), batch_size)])


def toy_paired_set(n: int, pool_size: int, seed: int = 0, features=None, clipseg=None) -> PairedSet:
    """The ToyWorld version of the LAION-edit set: n training scenes with their exact captions, a
    pool of `pool_size` other training scenes to retrieve pseudo-targets from."""
    from ...features import clip_features
    from ...models import load

    features = features or clip_features("clip", profile="toy")
    clipseg = clipseg or load("clipseg", profile="toy")
    scenes = [world.scene_for("train", 5_000_000 + seed * 100_000 + i) for i in range(n)]
    pool = np.stack([world.render(world.scene_for("train", 6_000_000 + seed * 100_000 + j)) for j in range(pool_size)])
    sources = np.stack([world.render(s) for s in scenes])
    return build_paired_set(features, clipseg, sources, [s.caption for s in scenes], pool,
                            np.random.default_rng(seed))


def pseudo_target_accuracy(paired: PairedSet) -> float:
    """How often the oracle reads the pseudo-target as the edit prompt says (objects, colours and
    background; positions are free, as for LAION's retrieved pairs)."""
    from ...toy import oracle

    return float(np.mean([oracle.caption_agreement(t, p) for t, p in zip(paired.targets, paired.prompts)]))
