"""``editnb toy eval``: measure the shipped ToyWorld models on held-out data with the oracle.

Every figure is computed here, from the test split (scene/edit indices the training never saw),
with fixed seeds, so two runs on the same machine print the same table.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..models import tokenize
from . import oracle, world
from .data import to_tensor

TARGETS = {
    "vae_psnr": (">=", 30.0),
    "clip_top1": (">=", 0.95),
    "t2i_single": (">=", 0.85),
    "t2i_pair": (">=", 0.6),
    "ip2p_success": (">=", 0.75),
    "ip2p_bg_psnr": (">=", 24.0),
    "xattn_iou": (">=", 0.4),
    "clipseg_iou": (">=", 0.6),
    "ip_adapter_recall": (">=", 0.5),
    # toy-sd's attention where ViMAEdit's grounding reads it (P2: Q of Eq. 9; P1: the saliency s_0)
    "attn_self_entropy_p2": ("<=", 0.85),
    "attn_self_own_object_p2": (">=", 3.0),
    "attn_cross_iou_p1": (">=", 0.5),
    # ViMAEdit's iterative grounding (Eq. 9) against cross-attention alone, on held-out object edits
    "grounding_gain": (">=", 0.05),
    "grounding_steps_above": (">=", 0.8),
}
SAMPLING = {"steps": 25, "guidance_scale": 5.0, "ip2p_text_guidance": 7.5, "ip2p_image_guidance": 1.5, "seed": 0}


# fp32 everywhere; CUDA when present (the figures then differ from a CPU run in the last digits)
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _load(name):
    from ..models import load

    return load(name, profile="toy", device=str(DEVICE), dtype=torch.float32)


def _images(arr) -> list[np.ndarray]:
    return [np.rint(np.clip(a, 0, 1) * 255).astype(np.uint8) for a in arr]


def vae_psnr(n: int = 128) -> float:
    """Mean reconstruction PSNR (dB) of toy-vae on test scenes (posterior mean, no sampling)."""
    vae = _load("sd").vae
    scenes = [world.scene_for("test", i) for i in range(n)]
    x = torch.stack([to_tensor(world.render(s)) for s in scenes]).to(DEVICE)
    with torch.no_grad():
        rec = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
    mse = ((rec - x) / 2).pow(2).mean((1, 2, 3))
    return float((10 * torch.log10(1.0 / mse)).mean())


def clip_top1(n: int = 150) -> float:
    """Zero-shot accuracy of toy-clip: for single-object test images, pick the right caption
    among all colour x shape captions (with the image's background)."""
    model, processor = _load("clip")
    tok = processor.tokenizer
    pairs = [(c, s) for c in world.COLORS for s in world.SHAPES]
    correct = 0
    scenes = [world.scene_for("test", i, n_objects=1) for i in range(n)]
    with torch.no_grad():
        pixels = torch.stack([to_tensor(world.render(s)) for s in scenes]).to(DEVICE)
        img = model.get_image_features(pixel_values=pixels)
        img = F.normalize(_features(img), dim=-1)
        for bg in world.BACKGROUNDS:
            texts = [f"a {c} {s} on a {bg} background" for c, s in pairs]
            ids = tokenize(tok, texts).to(DEVICE)
            txt = F.normalize(_features(model.get_text_features(input_ids=ids)), dim=-1)
            for k, sc in enumerate(scenes):
                if sc.background != bg:
                    continue
                guess = pairs[int((img[k] @ txt.T).argmax())]
                correct += guess == (sc.objects[0].color, sc.objects[0].shape)
    return correct / n


def _features(out):
    """transformers 5 returns a model output from get_*_features; older versions a tensor."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def generate(prompts: list[str], seed: int = 0, steps: int | None = None, guidance: float | None = None):
    pipe = _load("sd")
    out = pipe(prompts, num_inference_steps=steps or SAMPLING["steps"],
               guidance_scale=guidance or SAMPLING["guidance_scale"],
               generator=torch.Generator().manual_seed(seed), output_type="np")
    return _images(out.images)


def t2i_accuracy(n_objects: int, n: int = 60) -> float:
    """Fraction of toy-sd samples from held-out captions that the oracle reads as the caption says."""
    captions = [world.scene_for("test", i, n_objects=n_objects).caption for i in range(n)]
    images = generate(captions, seed=n_objects)
    return float(np.mean([oracle.caption_agreement(im, c) for im, c in zip(images, captions)]))


def ip2p_edits(edits: list[world.Edit], seed: int = 0, steps: int | None = None,
               text_guidance: float | None = None, image_guidance: float | None = None) -> list[np.ndarray]:
    from PIL import Image

    pipe = _load("ip2p")
    out = pipe([e.instruction for e in edits], image=[Image.fromarray(e.source_image()) for e in edits],
               num_inference_steps=steps or SAMPLING["steps"],
               guidance_scale=text_guidance or SAMPLING["ip2p_text_guidance"],
               image_guidance_scale=image_guidance or SAMPLING["ip2p_image_guidance"],
               generator=torch.Generator().manual_seed(seed), output_type="np")
    return _images(out.images)


def _success_rate(edits: list[world.Edit], chunk: int = 20) -> float:
    """The oracle's success rate of toy-ip2p on `edits`, sampled `chunk` at a time (the noise of an
    item depends on its chunk, so the chunk size is part of the measurement)."""
    done = [oracle.edit_success(im, e) for start in range(0, len(edits), chunk)
            for im, e in zip(ip2p_edits(edits[start:start + chunk]), edits[start:start + chunk])]
    return float(np.mean(done))


def ip2p_scores(n: int = 60) -> dict[str, float]:
    """Edit success (oracle) and PSNR outside the edit mask of toy-ip2p on n held-out edits (ToyWorld's
    mix of kinds), and the success of each kind on the first n held-out edits of that kind (a kind is
    about a sixth of the mix: its share alone would be too few edits to tell 0.75 from 0.9)."""
    edits = [world.edit_for("test", i) for i in range(n)]
    images = ip2p_edits(edits)
    success = [oracle.edit_success(im, e) for im, e in zip(images, edits)]
    bg = [oracle.preservation(im, e) for im, e in zip(images, edits) if e.kind != "background"]
    by_kind = {kind: _success_rate([world.edit_for("test", i, kind) for i in range(n)]) for kind in world.EDIT_KINDS}
    return {"ip2p_success": float(np.mean(success)),
            "ip2p_bg_psnr": float(np.mean(np.minimum(bg, 60.0))),
            "ip2p_success_by_kind": by_kind}


def xattn_iou(n: int = 40) -> float:
    """Mean IoU between the shape word's cross-attention map (16x16 layers, all steps, upsampled,
    min-max normalised, thresholded at 0.5) and the generated object's mask read by the oracle.

    Samples whose object the oracle cannot find count as IoU 0."""
    from ..attention import AttentionStore, attach
    from ..attention.words import token_indices

    pipe = _load("sd")
    scenes = [world.scene_for("test", i, n_objects=1) for i in range(n)]
    captions = [s.caption for s in scenes]
    store = AttentionStore(kinds=("cross",))
    with attach(pipe.unet, store):
        images = generate(captions, seed=7)
    res = max(s.resolution for s in store.sites.values())
    maps = store.aggregate("cross", resolution=res)  # (n, res, res, tokens)
    ious = []
    for k, (scene, image) in enumerate(zip(scenes, images)):
        obj = scene.objects[0]
        idx = token_indices(pipe.tokenizer, captions[k], obj.shape)
        m = maps[k, :, :, idx].mean(-1)[None, None].float().cpu()
        m = F.interpolate(m, size=image.shape[:2], mode="bilinear", align_corners=False)[0, 0]
        m = (m - m.min()) / (m.max() - m.min() + 1e-8)
        pred = (m > 0.5).numpy()
        found = [d for d in oracle.read(image).objects if d.shape == obj.shape] or oracle.read(image).objects
        if not found:
            ious.append(0.0)
            continue
        true = max(found, key=lambda d: d.area).mask
        ious.append(float((pred & true).sum() / max(1, (pred | true).sum())))
    return float(np.mean(ious))


def attention_grounding(n: int = 24) -> dict:
    """toy-sd's attention, level by level, on forward-noised held-out scenes with their exact masks
    (:func:`editnb.toy.attention_stats.attention_stats`), and the three figures ViMAEdit's
    grounding depends on: the self-attention at P2 (its row entropy as a fraction of uniform, and
    how much more a patch attends to its own object than that object's share of the image) and the
    cross-attention IoU at P1 (see :func:`editnb.methods.vimaedit.grounding.grounding_resolutions`)."""
    from ..methods.vimaedit.grounding import grounding_resolutions
    from .attention_stats import attention_stats

    pipe = _load("sd")
    stats = attention_stats(pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer, n=n)
    p1, p2 = grounding_resolutions(pipe.unet)
    return {"attn_by_level": {f"{r}x{r}": v for r, v in stats.items()},
            "attn_self_entropy_p2": stats[p2]["self_entropy"], "attn_self_own_object_p2": stats[p2]["self_own_object"],
            "attn_cross_iou_p1": stats[p1]["cross_iou"]}


def vimaedit_grounding(n: int = 15) -> dict:
    """ViMAEdit's grounding on held-out object edits (test scenes 100..100+n, a reshape and a recolour
    each, never the chapter's), 25 steps, toy-sd + toy-ip-adapter: the final mask's mean IoU per
    grounding of Table 2, the iterative grounding's gain over cross-attention alone, and the share
    of grounded steps at which it is above (the paper's Figure 6a: all of them)."""
    from ..methods.vimaedit import compare_groundings

    edits = [world.edit_for("test", 100 + i, kind=k) for i in range(n) for k in ("reshape", "recolor")]
    c = compare_groundings(_load("ip-adapter"), edits, steps=SAMPLING["steps"])
    return {"grounding_edits": len(edits), "grounding_iou_ca": c.final("cross-attention"), "grounding_iou_dpl": c.final("dpl"),
            "grounding_iou_iterative": c.final("iterative"),
            "grounding_gain": c.final("iterative") - c.final("cross-attention"),
            "grounding_steps_above": c.steps_above("iterative")}


def _from_image_embeddings(pipe, embeds: torch.Tensor, seeds: list[int]) -> list[list[np.ndarray]]:
    """For each image embedding (n, dim), one sample per seed of `pipe` conditioned on it alone
    (empty prompt, classifier-free guidance against the zero embedding); sample k of every
    embedding starts from the noise of seed k.

    One pipeline call per embedding: diffusers' pipelines hold ONE image conditioning for the whole
    prompt batch and repeat ``ip_adapter_image_embeds`` batch-size times, so n different embeddings
    in one call hand every sample the tokens of all n images at once (4n tokens, one mixture)."""
    samples = []
    for e in embeds[:, None]:  # (1, dim) each
        out = pipe([""], ip_adapter_image_embeds=[torch.stack([torch.zeros_like(e), e])],
                   num_images_per_prompt=len(seeds), num_inference_steps=SAMPLING["steps"],
                   guidance_scale=SAMPLING["guidance_scale"],
                   generator=[torch.Generator().manual_seed(s) for s in seeds], output_type="np")
        samples.append(_images(out.images))
    return samples


def ip_adapter_similarity(n: int = 40) -> dict[str, float]:
    """Cosine similarity in toy-clip image space between a conditioning image and the image
    toy-sd generates from its embedding alone (empty prompt, adapter scale 1), against the same
    figure for unrelated pairs (generated image vs another conditioning image)."""
    pipe = _load("ip-adapter")
    pipe.set_ip_adapter_scale(1.0)
    scenes = [world.scene_for("test", i) for i in range(n)]
    pixels = torch.stack([to_tensor(world.render(s)) for s in scenes]).to(DEVICE)
    with torch.no_grad():
        embeds = pipe.image_encoder(pixel_values=pixels).image_embeds
    generated = torch.stack([to_tensor(im[0]) for im in _from_image_embeddings(pipe, embeds, [3])]).to(DEVICE)
    model, _ = _load("clip")
    with torch.no_grad():
        a = F.normalize(_features(model.get_image_features(pixel_values=pixels)), dim=-1)
        b = F.normalize(_features(model.get_image_features(pixel_values=generated)), dim=-1)
    sim = a @ b.T
    matched = float(sim.diag().mean())
    unrelated = float((sim.sum() - sim.diag().sum()) / (n * n - n))
    return {"ip_adapter_sim": matched, "ip_adapter_sim_unrelated": unrelated}


def ip_adapter_recall(n: int = 100, seeds: int = 3) -> dict[str, float]:
    """What the image embedding alone brings back (ViMAEdit's Figure 5 test): toy-sd conditioned
    only on a held-out scene's toy-clip image embedding (adapter scale 1, empty prompt), `seeds`
    samples per scene.  ``ip_adapter_recall``: fraction of scenes whose objects (shape and colour)
    the oracle finds in at least half of the samples; ``..._unrelated``: the same test against the
    objects of another scene, the chance level."""
    pipe = _load("ip-adapter")
    pipe.set_ip_adapter_scale(1.0)
    scenes = [world.scene_for("test", 30_000 + i) for i in range(n)]
    pixels = torch.stack([to_tensor(world.render(s)) for s in scenes]).to(DEVICE)
    with torch.no_grad():
        embeds = pipe.image_encoder(pixel_values=pixels).image_embeds
    samples = _from_image_embeddings(pipe, embeds, [100 + k for k in range(seeds)])
    hits = np.array([[oracle.objects_found(im, scenes[i]) for im in samples[i]] for i in range(n)])
    chance = np.array([[oracle.objects_found(im, scenes[(i + 1) % n]) for im in samples[i]] for i in range(n)])
    return {"ip_adapter_recall": float((hits.mean(1) >= 0.5).mean()),
            "ip_adapter_recall_unrelated": float((chance.mean(1) >= 0.5).mean()),
            "ip_adapter_recall_per_sample": float(hits.mean())}


def clipseg_scores(n: int = 200) -> dict[str, float]:
    """toy-clipseg on held-out scenes: mean IoU of the thresholded mask (probability > 0.5) with the
    exact mask for queries of present objects and backgrounds, and the fraction of queries of absent
    objects answered with (almost) nothing (under 2% of the image)."""
    from ..methods.iedit import clipseg_masks
    from .data import segmentation_example

    rng = np.random.default_rng(11)
    scenes = [world.scene_for("test", 20_000 + i) for i in range(n)]
    examples = [segmentation_example(s, rng) for s in scenes]
    pred = clipseg_masks(_load("clipseg"), [world.render(s) for s in scenes], [q for q, _ in examples])
    ious, empty_ok = [], []
    for p, (_, true) in zip(pred, examples):
        if true.any():
            ious.append((p & true).sum() / max(1, (p | true).sum()))
        else:
            empty_ok.append(p.mean() < 0.02)
    return {"clipseg_iou": float(np.mean(ious)), "clipseg_absent_ok": float(np.mean(empty_ok))}


def iedit_scores(n: int = 15) -> dict:
    """The Table 1 columns of iEdit on held-out ToyWorld edits (recolour, reshape, background;
    strength 0.6, guidance 7.5): SDEdit with toy-sd vs iEdit and iEdit-M with toy-iedit."""
    from ..methods import iedit
    from ..metrics import ClipFeatures

    methods = iedit.toy_methods(_load("sd"), _load("iedit"), _load("clipseg"), strength=0.6, steps=SAMPLING["steps"])
    rows = iedit.compare_on_toy(methods, iedit.toy_edits(n), ClipFeatures(*_load("clip")))["rows"]
    # CLIPScore on iEdit's scale (Hessel et al.'s 2.5 max(cos, 0), %), and 100 max(cos, 0) beside it
    columns = {"iedit_clipscore": "CLIPScore", "iedit_clip_sim": "CLIP sim. x100", "iedit_toy_fid": "toy-FID",
               "iedit_ssim_m": "SSIM-M", "iedit_ssim_m_bar": "SSIM-M-bar", "iedit_success": "oracle success"}
    return {key: {m: r[col] for m, r in rows.items()} for key, col in columns.items()}


def editclip_scores(n: int = 36) -> dict:
    """EditCLIP: retrieval MAP@10 on held-out pairs (vs CLIP and CLIP-Dir) and exemplar transfer on
    `n` held-out quartets (trained vs re-initialised projection); see editnb.methods.editclip.toy_eval."""
    from ..methods.editclip.toy_eval import toy_figures

    return toy_figures(n_edits=n, steps=SAMPLING["steps"])


def uip2p_scores(n: int = 36, matched_ip2p: str | None = None) -> dict:
    """UIP2P: forward-then-reverse reconstruction, oracle edit success per kind and toy MagicBrush
    metrics of toy-uip2p vs its untrained initialisation (and the matched InstructPix2Pix in the
    folder `matched_ip2p`) on `n` held-out edits; see editnb.methods.uip2p.toy_eval."""
    from ..bench.data import load_toy_magicbrush
    from ..methods.uip2p.toy_eval import toy_figures
    from ..runtime import data_dir

    root = data_dir() / "bench" / "toy-magicbrush"
    magicbrush = {split: load_toy_magicbrush(root, split)[:n] for split in ("single", "multi")}
    return toy_figures(n=n, steps=SAMPLING["steps"], matched_ip2p=matched_ip2p, device=str(DEVICE),
                       magicbrush=magicbrush)


METRICS = {
    "vae_psnr": lambda n: {"vae_psnr": vae_psnr(n or 128)},
    "clip_top1": lambda n: {"clip_top1": clip_top1(n or 150)},
    "t2i_single": lambda n: {"t2i_single": t2i_accuracy(1, n or 60)},
    "t2i_pair": lambda n: {"t2i_pair": t2i_accuracy(2, n or 60)},
    "ip2p": lambda n: ip2p_scores(n or 60),
    "xattn_iou": lambda n: {"xattn_iou": xattn_iou(n or 40)},
    "attention": lambda n: attention_grounding(n or 24),
    "grounding": lambda n: vimaedit_grounding(n or 15),
    "ip_adapter": lambda n: {**ip_adapter_similarity(n or 40), **ip_adapter_recall(n or 100)},
    "clipseg": lambda n: clipseg_scores(n or 200),
    "iedit": lambda n: iedit_scores(n or 15),
    "editclip": lambda n: editclip_scores(n or 36),
    "uip2p": lambda n, matched_ip2p=None: uip2p_scores(n or 36, matched_ip2p),
}
CARD_KEYS = {
    "toy-vae": ["vae_psnr"], "toy-clip": ["clip_top1"], "toy-sd": ["t2i_single", "t2i_pair", "xattn_iou", "vae_psnr", "attn_self_entropy_p2",
               "attn_self_own_object_p2", "attn_cross_iou_p1", "attn_by_level", "grounding_edits", "grounding_iou_ca",
               "grounding_iou_dpl", "grounding_iou_iterative", "grounding_gain", "grounding_steps_above"],
    "toy-ip2p": ["ip2p_success", "ip2p_bg_psnr", "ip2p_success_by_kind"],
    "toy-ip-adapter": ["ip_adapter_sim", "ip_adapter_sim_unrelated", "ip_adapter_recall",
                       "ip_adapter_recall_unrelated", "ip_adapter_recall_per_sample"],
    "toy-clipseg": ["clipseg_iou", "clipseg_absent_ok"],
    "toy-iedit": ["iedit_clipscore", "iedit_clip_sim", "iedit_toy_fid", "iedit_ssim_m", "iedit_ssim_m_bar", "iedit_success"],
    "toy-editclip": ["editclip_map10", "editclip_map10_clip", "editclip_map10_clipdir", "editclip_auc",
                     "editclip_roc_auc"],
    "toy-editclip-ip2p": ["editclip_success", "editclip_success_untrained", "editclip_kind", "editclip_kind_untrained",
                          "editclip_success_by_kind"],
    "toy-uip2p": ["uip2p_recon_mae", "uip2p_recon_mae_untrained", "uip2p_recon_mae_ip2p_matched", "uip2p_recon_scene",
                  "uip2p_recon_scene_untrained", "uip2p_recon_scene_ip2p_matched", "uip2p_success",
                  "uip2p_success_untrained", "uip2p_success_ip2p_matched", "uip2p_success_by_kind",
                  "uip2p_success_by_kind_ip2p_matched", "uip2p_magicbrush", "uip2p_magicbrush_ip2p_matched",
                  "uip2p_ip2p_matched_training"],
}


def evaluate(n: int | None = None, only=None, json_path: str | None = None, update_cards: bool = False,
             matched_ip2p: str | None = None) -> dict:
    """Compute the metrics (all, or those in `only`), optionally write JSON and model cards.
    `matched_ip2p`: the folder of UIP2P's matched InstructPix2Pix, measured beside toy-uip2p."""
    names = list(only) if only else list(METRICS)
    unknown = [m for m in names if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {list(METRICS)}")
    torch.manual_seed(0)
    results: dict = {}
    t0 = time.time()
    for name in names:
        results.update(METRICS[name](n, matched_ip2p) if name == "uip2p" else METRICS[name](n))
    results["eval_seconds"] = round(time.time() - t0, 1)
    results["sampling"] = dict(SAMPLING)
    measured = set(results)
    if json_path:
        path = Path(json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if only and path.exists():  # a partial evaluation updates the figures it measured
            merged = json.loads(path.read_text())
            seconds = merged.get("eval_seconds", 0) + results["eval_seconds"]
            merged.update(results)
            merged["eval_seconds"] = round(seconds, 1)
            results = merged
        path.write_text(json.dumps(results, indent=2))
    if update_cards:
        _update_cards(results, measured)
    return results


def _update_cards(results: dict, measured=None) -> None:
    """Write the figures into the cards of the models they describe; with `measured` (the keys this
    run computed), only the cards that a fresh figure belongs to, so a partial evaluation leaves the
    other cards as they are."""
    from ..models import models_dir
    from .cards import write_card

    for folder, keys in CARD_KEYS.items():
        path = models_dir() / folder
        summary_file = path / "training.json"
        if not summary_file.exists():
            continue
        if measured is not None and not measured & set(keys):
            continue
        summary = json.loads(summary_file.read_text())
        figures = {k: _fmt(results[k]) for k in keys if k in results}
        if figures:
            figures["sampling"] = _fmt(results["sampling"])
            write_card(path, summary, figures)


def _fmt(v):
    if isinstance(v, float):
        return round(v, 3)
    if isinstance(v, dict):
        return {k: _fmt(x) for k, x in v.items()}
    return v


def _flat(value: dict, prefix: str):
    """(name[k][k2]..., number) for every number in a nested dict of figures."""
    for k, v in value.items():
        if isinstance(v, dict):
            yield from _flat(v, f"{prefix}[{k}]")
        else:
            yield f"{prefix}[{k}]", v


def print_table(results: dict) -> None:
    print(f"{'metric':<28}{'value':>10}  target")
    for key, value in results.items():
        if key in ("sampling", "eval_seconds"):
            continue
        if isinstance(value, dict):
            for name, v in _flat(value, key):
                print(f"  {name}".ljust(28) + f"{v:>10.3f}")
            continue
        if isinstance(value, str):  # a note that goes with the figures (e.g. how a model was trained)
            print(f"{key:<28}{value}")
            continue
        op, target = TARGETS.get(key, ("", None))
        met = value >= target if op == ">=" else value <= target if target is not None else None
        mark = "" if target is None else f"{op} {target}  " + ("ok" if met else "missed")
        print(f"{key:<28}{value:>10.3f}  {mark}")
    print(f"(evaluated in {results.get('eval_seconds', 0):.0f} s)")
