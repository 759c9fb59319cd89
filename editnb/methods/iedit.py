"""iEdit: Localised Text-guided Image Editing with Weak Supervision (Bodur et al., CVPRW 2024).

No public code exists; the paper is the spec and every function cites its equation.

- Paired dataset construction (Sec. 3.1): caption -> edit prompt (one adjective or noun replaced by
  an antonym or a co-hyponym) -> pseudo-target = nearest neighbour of the MEAN of the CLIP image
  embedding of the source and the CLIP text embedding of the edit prompt.
- Losses (Sec. 3.3-3.4): L_paired (Eq. 2-4), L_global with x-hat from Eq. 6-7, the (1 - t/T) and
  t/T weights, L_mask (Eq. 8-9), L_perc (Eq. 10), L_loc (Eq. 11), the full objective (Eq. 12).
- Inference: SDEdit with strength 0.6-0.8, and iEdit-M, which at every DDIM step puts the noised
  source latent back outside the mask (Eq. 13).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .. import diffusion
from ..toy import world

# ------------------------------------------------------------------ Sec. 3.1: the paired dataset

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


def _is_adjective(word: str) -> bool:
    if word in world.COLORS or word in world.BACKGROUNDS:
        return True
    try:
        from nltk.corpus import wordnet as wn

        return bool(wn.synsets(word, pos=wn.ADJ)) and not wn.synsets(word, pos=wn.NOUN)
    except (ImportError, LookupError):
        return False


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
            if span and _is_adjective(span[-1]) and hi < len(words):
                span = span + [words[hi]]
            out[side] += span
    return " ".join(out[0]), " ".join(out[1])


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
    """The sd15 recipe: replace an adjective by an antonym or a noun by a random co-hyponym
    (a sibling under one of its hypernyms) with WordNet (nltk)."""
    try:
        from nltk.corpus import wordnet as wn

        wn.ensure_loaded()
    except (ImportError, LookupError) as e:
        raise RuntimeError("edit prompts for real captions use WordNet: pip install nltk, then "
                           "python -c \"import nltk; nltk.download('wordnet')\" (or use the toy profile, "
                           "whose lexicon is built in)") from e
    words = caption.split()
    order = rng.permutation(len(words))
    for k in order:
        w = words[k].strip(".,").lower()
        for syn in wn.synsets(w, pos=[wn.ADJ, wn.NOUN]):
            for lemma in syn.lemmas():
                if lemma.antonyms():
                    new = lemma.antonyms()[0].name().replace("_", " ")
                    return EditPrompt(caption, " ".join(words[:k] + [new] + words[k + 1:]), w, new, "antonym")
            if syn.pos() == "n":
                siblings = [s for h in syn.hypernyms() for s in h.hyponyms() if s != syn]
                if siblings:
                    new = siblings[int(rng.integers(len(siblings)))].lemmas()[0].name().replace("_", " ")
                    return EditPrompt(caption, " ".join(words[:k] + [new] + words[k + 1:]), w, new, "co-hyponym")
    raise ValueError(f"no word of {caption!r} has an antonym or co-hyponym in WordNet")


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


# ------------------------------------------------------------------ Sec. 3.4: masks from CLIPSeg


@torch.no_grad()
def clipseg_masks(clipseg, images, texts, threshold: float = 0.5, batch_size: int = 64) -> np.ndarray:
    """Boolean masks (B, H, W) at the images' size for text queries (CLIPSeg, thresholded
    probabilities).  `clipseg` is the ``(model, processor)`` pair of ``load("clipseg")``; an empty
    query gives an empty mask."""
    from ..images import to_numpy

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


# ------------------------------------------------------------------ the pseudo-paired training set


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
        from ..toy.data import to_tensor

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
    from ..metrics import clip_features
    from ..models import load

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
    from ..toy import oracle

    return float(np.mean([oracle.caption_agreement(t, p) for t, p in zip(paired.targets, paired.prompts)]))


# ------------------------------------------------------------------ Sec. 3.3-3.4: the losses


def _alpha(scheduler, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """alpha_t (cumulative product, as in Song et al.'s notation used by the paper), broadcast."""
    return scheduler.alphas_cumprod.to(like.device)[t].to(like.dtype).reshape(-1, 1, 1, 1)


def noisy_source(scheduler, z1, t, eps1):
    """Eq. 2: z_t = sqrt(alpha_t) z_1 + sqrt(1 - alpha_t) eps_1."""
    a = _alpha(scheduler, t, z1)
    return a.sqrt() * z1 + (1 - a).sqrt() * eps1


def target_noise(scheduler, z_t, z2, t):
    """Eq. 3: the noise that turns the pseudo-target z_2 into the SAME noisy latent z_t:
    eps_2 = (z_t - sqrt(alpha_t) z_2) / sqrt(1 - alpha_t)."""
    a = _alpha(scheduler, t, z_t)
    return (z_t - a.sqrt() * z2) / (1 - a).sqrt()


def predict_z0(scheduler, z_t, eps_pred, t):
    """Eq. 7: z-hat_1 = (z_t - sqrt(1 - alpha_t) eps_theta) / sqrt(alpha_t)."""
    a = _alpha(scheduler, t, z_t)
    return (z_t - (1 - a).sqrt() * eps_pred) / a.sqrt()


def loss_paired(eps_pred, eps2):
    """Eq. 4: || eps_2 - eps_theta(z_t, t, tau(y_2)) ||^2."""
    return F.mse_loss(eps_pred, eps2)


def loss_mask(eps_pred, eps1, eps2, m1, m2):
    """Eq. 8-9: the target noise on the target mask M_2, the source noise outside the source mask
    (1 - M_1).  Masks are (B, 1, h, w) at the latent resolution, 1 on the edited region."""
    fg = ((eps2 * m2 - eps_pred * m2) ** 2).mean()
    bg = ((eps1 * (1 - m1) - eps_pred * (1 - m1)) ** 2).mean()
    return fg + bg


def time_weights(t: torch.Tensor, T: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """(1 - t/T) for the CLIP losses, t/T for the noise losses (Sec. 3.3): CLIP judges clean
    images best, noise targets are most reliable at high noise."""
    r = t.float() / T
    return 1 - r, r


class DifferentiableCLIP:
    """D_CLIP(x, y) = 1 - cos(CLIP image(x), CLIP text(y)), differentiable in the image.

    Images are tensors in [-1, 1]; they are resized to the CLIP input size and normalised with the
    processor's mean and std inside the graph."""

    def __init__(self, model, processor):
        self.model, self.processor = model.eval().requires_grad_(False), processor
        ip = processor.image_processor
        crop = ip.crop_size
        self.size = int(crop["height"] if hasattr(crop, "__getitem__") and not isinstance(crop, int) else crop)
        self.mean = torch.tensor(ip.image_mean).reshape(1, 3, 1, 1)
        self.std = torch.tensor(ip.image_std).reshape(1, 3, 1, 1)

    def image_features(self, x):
        x = F.interpolate((x + 1) / 2, size=(self.size, self.size), mode="bilinear", align_corners=False)
        x = (x - self.mean.to(x)) / self.std.to(x)
        out = self.model.get_image_features(pixel_values=x.to(self.model.dtype))
        return F.normalize((out if isinstance(out, torch.Tensor) else out.pooler_output).float(), dim=-1)

    def text_features(self, texts):
        tok = self.processor.tokenizer
        ids = tok(list(texts), padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids.to(self.model.device)
        out = self.model.get_text_features(input_ids=ids)
        return F.normalize((out if isinstance(out, torch.Tensor) else out.pooler_output).float(), dim=-1)

    def distance(self, x, texts) -> torch.Tensor:
        """Per-item 1 - cos."""
        return 1 - (self.image_features(x) * self.text_features(texts).to(x.device)).sum(-1)

    def hidden_states(self, x):
        x = F.interpolate((x + 1) / 2, size=(self.size, self.size), mode="bilinear", align_corners=False)
        x = (x - self.mean.to(x)) / self.std.to(x)
        out = self.model.vision_model(pixel_values=x.to(self.model.dtype), output_hidden_states=True)
        return out.hidden_states[1:]


def loss_global(clip: DifferentiableCLIP, x_hat, prompts):
    """Eq. 5: D_CLIP(x-hat_1, y_2), per item."""
    return clip.distance(x_hat, prompts)


def loss_loc(clip: DifferentiableCLIP, x_hat, m1_image, differences):
    """Eq. 11: D_CLIP(x-hat_1 * M_1, y_2^diff), per item; `m1_image` is (B, 1, H, W) in pixels."""
    return clip.distance(x_hat * m1_image, differences)


def loss_perc(clip: DifferentiableCLIP, x_hat, x2, m1_image, m2_image):
    """Eq. 10 with toy-clip's vision layers as the feature network V ("toy-perceptual"; the paper
    uses VGG): || V(x-hat_1 * M_1) - V(x_2 * M_2) ||^2 summed over layers."""
    a = clip.hidden_states(x_hat * m1_image)
    b = clip.hidden_states(x2 * m2_image)
    return sum(((fa - fb) ** 2).mean((1, 2)) for fa, fb in zip(a, b))


@dataclass
class LossTerms:
    total: torch.Tensor
    paired: torch.Tensor
    mask: torch.Tensor
    global_: torch.Tensor
    loc: torch.Tensor
    perc: torch.Tensor


def objective(unet, vae, scheduler, clip: DifferentiableCLIP, text_states, prompts, differences, x1, x2,
              m1, m2, generator=None, lambda_perc: float = 0.1, use=("mask", "global", "loc", "perc")) -> LossTerms:
    """The full objective (Eq. 12) for a batch of (source x_1, pseudo-target x_2, masks M_1, M_2
    in pixels (B, 1, H, W), edit prompts y_2 (encoded in `text_states`), differences y_2^diff):

        (1 - t/T) (L_loc + L_global) + (t/T) L_mask + lambda_perc L_perc

    ``use`` selects the terms (ablations of Table 2); without "mask", L_paired replaces L_mask."""
    sf = vae.config.scaling_factor
    with torch.no_grad():
        z1 = vae.encode(x1).latent_dist.mean * sf
        z2 = vae.encode(x2).latent_dist.mean * sf
    T = scheduler.config.num_train_timesteps
    t = torch.randint(0, T, (x1.shape[0],), generator=generator).to(z1.device)
    eps1 = torch.randn(z1.shape, generator=generator).to(z1)
    z_t = noisy_source(scheduler, z1, t, eps1)                   # Eq. 2
    eps2 = target_noise(scheduler, z_t, z2, t)                    # Eq. 3
    eps_pred = unet(z_t, t, encoder_hidden_states=text_states).sample
    w_clip, w_noise = time_weights(t, T)
    zero = torch.zeros((), device=z1.device)
    paired = loss_paired(eps_pred, eps2)                          # Eq. 4
    lm1 = F.interpolate(m1, size=z1.shape[-2:], mode="area")
    lm2 = F.interpolate(m2, size=z1.shape[-2:], mode="area")
    mask = loss_mask(eps_pred, eps1, eps2, lm1, lm2) if "mask" in use else zero   # Eq. 8-9
    noise_term = mask if "mask" in use else paired
    need_image = any(u in use for u in ("global", "loc", "perc"))
    g = loc = perc = torch.zeros(x1.shape[0], device=z1.device)
    if need_image:
        x_hat = vae.decode(predict_z0(scheduler, z_t, eps_pred, t).clamp(-20, 20) / sf).sample.clamp(-1, 1)  # Eq. 6-7
        if "global" in use:
            g = loss_global(clip, x_hat, prompts)                 # Eq. 5
        if "loc" in use:
            loc = loss_loc(clip, x_hat, m1, differences)          # Eq. 11
        if "perc" in use:
            perc = loss_perc(clip, x_hat, x2, m1, m2)             # Eq. 10
    total = (w_clip * (loc + g)).mean() + (w_noise.mean() * noise_term) + lambda_perc * perc.mean()
    return LossTerms(total, paired.detach(), mask.detach(), g.mean().detach(), loc.mean().detach(), perc.mean().detach())


def trainable_groups(unet) -> tuple[list, list]:
    """The two parameter groups iEdit updates alternately (Sec. 4.1): the UNet's input blocks
    (conv_in, time embedding, down blocks) and its middle block."""
    inp = list(unet.conv_in.parameters()) + list(unet.time_embedding.parameters()) + list(unet.down_blocks.parameters())
    mid = list(unet.mid_block.parameters())
    return inp, mid


# ------------------------------------------------------------------ inference


def edit(pipe, image, prompt: str, mask=None, strength: float = 0.7, guidance: float = 7.5, steps: int = 50,
         generator=None) -> diffusion.Result:
    """SDEdit-style inference (strength 0.6-0.8 in the paper); with `mask`, iEdit-M: after every
    DDIM step the latent outside the mask is replaced by the source latent noised to that step
    (Eq. 13), so the background is the source's at every noise level."""
    diffusion._check_generator(generator)
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    z1 = diffusion.encode_image(pipe, image)
    trace = None
    if mask is None:
        on_step = None
    else:
        m = torch.as_tensor(np.asarray(mask, np.float32))
        res = pipe.unet.config.sample_size * 2 ** (len(pipe.vae.config.block_out_channels) - 1)
        if m.ndim != 2 or tuple(m.shape) != (res, res):
            raise ValueError(f"the mask must be {res}x{res} (the model's resolution), got {tuple(m.shape)}")
        m = F.interpolate(m[None, None], size=z1.shape[-2:], mode="area").to(z1)
        m = (m > 0).to(z1)  # a latent cell touched by the mask may change
        sched = diffusion.make_scheduler(pipe)
        sched.set_timesteps(steps, device=z1.device)
        noise = diffusion.initial_noise(pipe, 1, generator)
        trace = []

        def on_step(i, t, latents):
            nxt = sched.timesteps[i + 1] if i + 1 < len(sched.timesteps) else None
            z_src = z1 if nxt is None else sched.add_noise(z1, noise, nxt.reshape(1))
            out = (1 - m) * z_src + m * latents   # Eq. 13
            trace.append((out, z_src, m))
            return out

    zt, start = diffusion.noise_to_strength(pipe, z1, strength, steps, generator)
    if mask is not None:  # the same noise for the start and for every background replacement
        sched0 = diffusion.make_scheduler(pipe)
        sched0.set_timesteps(steps, device=z1.device)
        zt = sched0.add_noise(z1, noise, sched0.timesteps[start].reshape(1))
    cond = diffusion.encode_prompt(pipe, [prompt])
    uncond = diffusion.encode_prompt(pipe, [""])
    z, _ = diffusion.denoise(pipe, zt, cond, uncond, guidance, steps, start=start, on_step=on_step)
    result = diffusion.Result(diffusion.decode(pipe, z), z)
    result.trace = trace
    return result


# ------------------------------------------------------------------ Table 1 on ToyWorld

#: ToyWorld edits whose target a caption with one word replaced describes (iEdit's edit prompts)
TOY_EDIT_KINDS = ("recolor", "reshape", "background")


def toy_edits(n: int, start: int = 0) -> list:
    """Held-out ToyWorld edits of the kinds iEdit's prompts express, in a fixed order."""
    return [world.edit_for("test", 30_000 + start + i, kind=TOY_EDIT_KINDS[i % len(TOY_EDIT_KINDS)]) for i in range(n)]


def compare_on_toy(methods: dict, edits, features, strength: float = 0.6, guidance: float = 7.5, steps: int = 25,
                   seed: int = 0) -> dict:
    """The columns of the paper's Table 1 on ToyWorld, per method: CLIPScore of the edit prompt,
    toy-FID against the true edited images, SSIM-M and SSIM-M-bar on the exact edit masks, plus
    the oracle's edit success.  `methods` maps a name to ``fn(edit, generator) -> PIL image``."""
    from .. import metrics as M
    from ..toy import oracle

    rows, outputs = {}, {}
    truth = [e.edited_image() for e in edits]
    for name, fn in methods.items():
        images = [np.asarray(fn(e, torch.Generator().manual_seed(seed + k))) for k, e in enumerate(edits)]
        ssim = np.array([M.ssim_masked(e.source_image(), im, e.mask()) for e, im in zip(edits, images)])
        rows[name] = {
            "CLIPScore": float(M.clip_score(features, images, [e.target_caption for e in edits]).mean()),
            "toy-FID": M.toy_fid(features, images, truth),
            "SSIM-M": float(np.nanmean(ssim[:, 0])),
            "SSIM-M-bar": float(np.nanmean(ssim[:, 1])),
            "oracle success": float(np.mean([oracle.edit_success(im, e) for im, e in zip(images, edits)])),
        }
        outputs[name] = images
    return {"rows": rows, "images": outputs}


def toy_methods(sd, iedit_pipe, clipseg, strength: float = 0.6, guidance: float = 7.5, steps: int = 25) -> dict:
    """SDEdit (toy-sd), iEdit and iEdit-M (toy-iedit; CLIPSeg mask of the source's difference words)."""
    def sdedit(e, g):
        return diffusion.sdedit(sd, e.source_image(), e.target_caption, strength=strength, guidance=guidance,
                                steps=steps, generator=g).image

    def plain(e, g):
        return edit(iedit_pipe, e.source_image(), e.target_caption, strength=strength, guidance=guidance,
                    steps=steps, generator=g).image

    def masked(e, g):
        mask = mask_for_item(clipseg, e.source_image(), e.source_caption, e.target_caption)
        return edit(iedit_pipe, e.source_image(), e.target_caption, mask=mask, strength=strength, guidance=guidance,
                    steps=steps, generator=g).image

    return {"SDEdit": sdedit, "iEdit": plain, "iEdit-M": masked}


# ------------------------------------------------------------------ benchmark registration


def mask_for_item(clipseg, image, source_prompt: str, target_prompt: str):
    """iEdit-M's inference mask: CLIPSeg of the source on y_1^diff (or on y_2^diff when the edit
    only adds words); None when CLIPSeg finds nothing, and the edit runs unmasked."""
    y1, y2 = difference_prompts(source_prompt, target_prompt)
    query = y1 or " ".join(w for w in y2.split() if w not in ("a", "an", "and", "the"))
    if not query:
        return None
    mask = clipseg_masks(clipseg, [image], [query])[0]
    return mask if mask.any() else None


def _register():
    from ..bench.runner import register

    @register("iedit", needs=("target_prompt",), models=("iedit",))
    def run_iedit(ctx, item, generator, steps, strength: float = 0.6, guidance: float = 7.5):
        """iEdit (Bodur et al. 2024): the fine-tuned model, SDEdit-style at strength 0.6."""
        return edit(ctx.model("iedit"), item.image, item.target_prompt, strength=strength, guidance=guidance,
                    steps=steps, generator=generator).image

    @register("iedit-m", needs=("source_prompt", "target_prompt"), models=("iedit", "clipseg"))
    def run_iedit_m(ctx, item, generator, steps, strength: float = 0.6, guidance: float = 7.5):
        """iEdit-M: iEdit with CLIPSeg's mask of the difference words and Eq. 13 at every step."""
        mask = mask_for_item(ctx.model("clipseg"), item.image, item.source_prompt, item.target_prompt)
        return edit(ctx.model("iedit"), item.image, item.target_prompt, mask=mask, strength=strength,
                    guidance=guidance, steps=steps, generator=generator).image


_register()
