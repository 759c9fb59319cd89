"""Every metric the papers report, each with the paper's definition.

Pixel metrics (L1, L2, MSE, PSNR) come from torchmetrics; SSIM is written here in torch with
torchmetrics' Gaussian 11x11 window (PIE-Bench's setting) because iEdit's SSIM-M needs its
per-pixel map; ranking metrics come from torchmetrics' retrieval functions and scikit-learn.
Which scale each CLIP score is on: :func:`clip_score` is PIE-Bench's CLIP similarity
(100 max(cos, 0)), :func:`clipscore_hessel` Hessel et al.'s CLIPScore as iEdit reports it
(250 max(cos, 0), in %).  Metrics that need pretrained features
take an explicit ``features`` object: :func:`clip_features` (any CLIPModel: ViT-L/14 or B/32 in
``sd15``, toy-clip in ``toy``).  Feature-based metrics computed with toy-clip carry a ``toy-``
name in the tables (toy-LPIPS, toy-FID, toy-DINO, toy-structure): they follow the standard
recipe with toy features and are NOT comparable to the published figures.

Images are anything :func:`editnb.images.to_numpy` takes; masks anything
:func:`editnb.images.as_mask` takes (one reader for every metric: soft masks thresholded at 0.5 of
their scale), True on the edited region.  Metrics over lists pair them item by item and refuse
lists of different lengths.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .features import ClipFeatures, clip_features  # noqa: F401  (part of the metrics API)
from . import pixels
from .images import as_mask, to_numpy

# ------------------------------------------------------------------ pixels


def _pair(a, b):
    x, y = to_numpy(a), to_numpy(b)
    if x.shape != y.shape:
        raise ValueError(f"images differ in size: {x.shape[:2]} vs {y.shape[:2]}; resize one with editnb.images.fit")
    return x, y


def _mask(mask, shape) -> np.ndarray:
    """The mask as every metric reads it (:func:`editnb.images.as_mask`), at the images' size."""
    m = as_mask(mask)
    if m.shape != tuple(shape[:2]):
        raise ValueError(f"mask of shape {m.shape} does not match images of size {tuple(shape[:2])}; "
                         "resize it nearest-neighbour")
    return m


def _count(items) -> int:
    """How many items a metric argument holds: a list's length, a batch's first dimension (a 4-D
    array or tensor), else one (an image, a mask, a caption)."""
    if isinstance(items, (list, tuple)):
        return len(items)
    return int(items.shape[0]) if getattr(items, "ndim", 0) == 4 else 1


def _same_length(**named) -> None:
    """Refuse arguments that pair item by item but hold different numbers of items (``zip`` would
    drop the extra ones, and a cosine would broadcast one row against many)."""
    counts = {name: _count(items) for name, items in named.items()}
    if len(set(counts.values())) > 1:
        raise ValueError("these arguments pair item by item, so they need as many items each; got "
                         + ", ".join(f"{name}: {n}" for name, n in counts.items()))


def _to_unit_tensor(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None].double() / 255.0


def apply_region(a, b, mask=None, region: str = "all"):
    """PIE-Bench's region convention: ``"background"`` multiplies both images by (1 - mask),
    ``"edit"`` by mask, ``"all"`` leaves them.  Returns uint8 arrays."""
    if region not in ("all", "background", "edit"):
        raise ValueError(f"region must be 'all', 'background' or 'edit', got {region!r}")
    x, y = _pair(a, b)
    if region == "all":
        return x, y
    if mask is None:
        raise ValueError(f"region={region!r} needs a mask")
    m = _mask(mask, x.shape)
    keep = ~m if region == "background" else m
    return x * keep[..., None], y * keep[..., None]


def l1(a, b, mask=None, region: str = "all") -> float:
    """Mean absolute error on [0, 1] images (MagicBrush's L1)."""
    x, y = apply_region(a, b, mask, region)
    from torchmetrics.functional import mean_absolute_error

    return float(mean_absolute_error(_to_unit_tensor(x), _to_unit_tensor(y)))


def mse(a, b, mask=None, region: str = "all") -> float:
    """Mean squared error on [0, 1] images (PIE-Bench reports it x10^4)."""
    x, y = apply_region(a, b, mask, region)
    from torchmetrics.functional import mean_squared_error

    return float(mean_squared_error(_to_unit_tensor(x), _to_unit_tensor(y)))


def l2(a, b, mask=None, region: str = "all") -> float:
    """MagicBrush's L2: the mean squared error on [0, 1] images (as in its evaluation code)."""
    return mse(a, b, mask, region)


def psnr(a, b, mask=None, region: str = "all") -> float:
    """PSNR in dB (data range 1); identical images give inf."""
    return pixels.psnr(*apply_region(a, b, mask, region))


#: SSIM's window (Wang et al. 2004; torchmetrics' default, which PIE-Bench's evaluation uses):
#: a Gaussian of standard deviation 1.5 truncated to 11 x 11, constants K1 = 0.01, K2 = 0.03.
SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    return g / g.sum()


def ssim_map(a, b, border: str = "valid", window: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """The SSIM map (Wang et al. 2004, Eq. 13 with a Gaussian window) of two RGB images on [0, 1]
    (data range 1), per pixel and channel: (H', W', 3).

    Local means, variances and covariance are Gaussian-weighted (separable `window` x `window`
    kernel, standard deviation `sigma`); variances are population ones (E[x^2] - mu^2, clamped at
    0), as in torchmetrics.  ``border`` says what happens where the window leaves the image:

    - ``"valid"``: only positions where it fits, a map (H - 10, W - 10); the mean of this map is
      what torchmetrics < 1.5 returned (it padded, then cropped the padding off), the version
      PIE-Bench's published numbers were computed with;
    - ``"reflect"``: the images are mirror-padded (torch's "reflect"), a full (H, W) map; its mean
      is torchmetrics >= 1.5's SSIM, and per-pixel maps (:func:`ssim_masked`) need every pixel.
    """
    if border not in ("valid", "reflect"):
        raise ValueError(f"border must be 'valid' (crop where the window does not fit) or 'reflect' "
                         f"(mirror-pad, full-size map), got {border!r}")
    if window % 2 == 0 or window < 1 or sigma <= 0:
        raise ValueError(f"the window is an odd size >= 1 and sigma > 0; got window={window}, sigma={sigma}")
    x, y = (_to_unit_tensor(v) for v in _pair(a, b))
    pad = window // 2
    if border == "valid" and min(x.shape[-2:]) < window:
        raise ValueError(f"images of size {tuple(x.shape[-2:])} are smaller than the {window}x{window} SSIM window; "
                         "use border='reflect' or larger images")
    if border == "reflect":
        if min(x.shape[-2:]) <= pad:
            raise ValueError(f"images of size {tuple(x.shape[-2:])} are too small to mirror-pad by {pad}")
        x, y = (F.pad(v, (pad, pad, pad, pad), mode="reflect") for v in (x, y))
    g = _gaussian_window(window, sigma)
    channels = x.shape[1]
    rows, cols = g.reshape(1, 1, -1, 1).repeat(channels, 1, 1, 1), g.reshape(1, 1, 1, -1).repeat(channels, 1, 1, 1)

    def blur(v):  # the separable Gaussian, per channel, no padding (the padding, if any, is done)
        return F.conv2d(F.conv2d(v, rows, groups=channels), cols, groups=channels)

    mu_x, mu_y = blur(x), blur(y)
    var_x = (blur(x * x) - mu_x ** 2).clamp_min(0)
    var_y = (blur(y * y) - mu_y ** 2).clamp_min(0)
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = SSIM_K1 ** 2, SSIM_K2 ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return s[0].permute(1, 2, 0).numpy()


def ssim(a, b, mask=None, region: str = "all", border: str = "valid") -> float:
    """SSIM of RGB images as PIE-Bench computes it (torchmetrics' SSIM: Gaussian 11x11 window,
    sigma 1.5, data range 1), on the region of :func:`apply_region`; the mean of :func:`ssim_map`
    (``border="valid"`` by default, the torchmetrics version of PIE-Bench's numbers)."""
    return float(ssim_map(*apply_region(a, b, mask, region), border=border).mean())


def ssim_masked(a, b, mask) -> tuple[float, float]:
    """iEdit's (SSIM-M, SSIM-M-bar): the mean of the SSIM map over the edited area and over the
    rest of the image (iEdit Sec. 4, "Evaluation metrics").  The map is Wang et al.'s [43] with
    its Gaussian 11x11 window (the same as :func:`ssim`), mirror-padded so that every pixel has a
    value, averaged over the RGB channels."""
    x, y = _pair(a, b)
    m = _mask(mask, x.shape)
    smap = ssim_map(x, y, border="reflect").mean(-1)
    inside = float(smap[m].mean()) if m.any() else float("nan")
    outside = float(smap[~m].mean()) if (~m).any() else float("nan")
    return inside, outside


def mask_iou(pred, true) -> float:
    """Intersection over union of two boolean masks (1.0 when both are empty)."""
    p, t = as_mask(pred), as_mask(true)
    if p.shape != t.shape:
        raise ValueError(f"masks differ in shape: {p.shape} vs {t.shape}")
    union = (p | t).sum()
    return 1.0 if union == 0 else float((p & t).sum() / union)


# ------------------------------------------------------------------ CLIP-space metrics


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a, b, dim=-1)


def clip_similarity(features: ClipFeatures, images, texts) -> np.ndarray:
    """Cosine similarity between each image and its text (CLIP-T of MagicBrush; the cosine inside
    both :func:`clip_score` and :func:`clipscore_hessel`)."""
    _same_length(images=images, texts=texts)
    return _cos(features.images(images), features.texts(texts)).cpu().numpy()


def clip_score(features: ClipFeatures, images, texts) -> np.ndarray:
    """PIE-Bench's "CLIP similarity" (torchmetrics' CLIPScore, which its evaluation code uses):
    100 * max(cos(image, text), 0).  NOT Hessel et al.'s CLIPScore, which iEdit reports: see
    :func:`clipscore_hessel` (2.5 times larger)."""
    return 100.0 * np.maximum(clip_similarity(features, images, texts), 0.0)


#: Hessel et al. (2021)'s rescaling weight of CLIPScore
HESSEL_W = 2.5


def clipscore_hessel(features: ClipFeatures, images, texts, w: float = HESSEL_W) -> np.ndarray:
    """CLIPScore of Hessel et al. (2021), the one iEdit cites [15]: w * max(cos(image, text), 0)
    with w = 2.5, printed in percent (x100) as iEdit's Tables 1-2 print "CLIPScore (%)": their
    62-67 % are cosines of about 0.25-0.27.  Equals 2.5 x :func:`clip_score`."""
    return 100.0 * w * np.maximum(clip_similarity(features, images, texts), 0.0)


def clip_region_similarity(features: ClipFeatures, images, texts, masks) -> np.ndarray:
    """PIE-Bench's edited-region CLIP similarity: pixels outside the mask blacked out."""
    _same_length(images=images, texts=texts, masks=masks)
    ims = [to_numpy(im) * _mask(m, to_numpy(im).shape)[..., None] for im, m in zip(images, masks)]
    return clip_similarity(features, ims, texts)


def clip_image_similarity(features: ClipFeatures, images_a, images_b) -> np.ndarray:
    """CLIP-I (MagicBrush): cosine similarity between the image embeddings of two images."""
    _same_length(images_a=images_a, images_b=images_b)
    return _cos(features.images(images_a), features.images(images_b)).cpu().numpy()


def clip_directional_similarity(features: ClipFeatures, sources, outputs, source_captions, target_captions) -> np.ndarray:
    """EditCLIP supplement Eq. 2: cos(F(I_q) - F(I_o), G(T_q) - G(T_o))."""
    _same_length(sources=sources, outputs=outputs, source_captions=source_captions, target_captions=target_captions)
    di = features.images(sources) - features.images(outputs)
    dt = features.texts(source_captions) - features.texts(target_captions)
    return _cos(di, dt).cpu().numpy()


def clip_instruction_similarity(features: ClipFeatures, sources, outputs, instructions) -> np.ndarray:
    """EditCLIP supplement Eq. 3, image change against the instruction's embedding.

    The supplement prints cos(F(I_q) - F(I_o), G(T)); we use the edit direction
    F(I_o) - F(I_q) so that a faithful edit scores positive, as Eq. 2 does on both sides."""
    _same_length(sources=sources, outputs=outputs, instructions=instructions)
    di = features.images(outputs) - features.images(sources)
    return _cos(di, features.texts(instructions)).cpu().numpy()


def s_visual(features: ClipFeatures, queries, outputs, exemplar_inputs, exemplar_edits) -> np.ndarray:
    """EditCLIP supplement Eq. 4 (Nguyen et al. 2023): cos(F(I_q) - F(I_o), F(I_i) - F(I_e))."""
    _same_length(queries=queries, outputs=outputs, exemplar_inputs=exemplar_inputs, exemplar_edits=exemplar_edits)
    a = features.images(queries) - features.images(outputs)
    b = features.images(exemplar_inputs) - features.images(exemplar_edits)
    return _cos(a, b).cpu().numpy()


def ec2t(edit_encoder, text_features, queries, outputs, instructions) -> np.ndarray:
    """EditCLIP's EC2T: cos(E(I_q, I_o), G(T)) with an edit encoder E (pairs -> embeddings) and
    the text embeddings of the instructions in the same space."""
    _same_length(queries=queries, outputs=outputs, instructions=instructions)
    e = F.normalize(edit_encoder(queries, outputs).float(), dim=-1)
    t = F.normalize(text_features(instructions).float(), dim=-1)
    return _cos(e, t.to(e.device)).cpu().numpy()


def ec2ec(edit_encoder, queries, outputs, exemplar_inputs, exemplar_edits) -> np.ndarray:
    """EditCLIP's EC2EC: cos(E(I_q, I_o), E(I_i, I_e)): is the output's edit the exemplar's edit?"""
    _same_length(queries=queries, outputs=outputs, exemplar_inputs=exemplar_inputs, exemplar_edits=exemplar_edits)
    a = edit_encoder(queries, outputs).float()
    b = edit_encoder(exemplar_inputs, exemplar_edits).float()
    return _cos(a, b).cpu().numpy()


# ------------------------------------------------------------------ feature-network metrics


def toy_lpips(features: ClipFeatures, a, b) -> float:
    """LPIPS recipe (Zhang et al. 2018) on toy-clip's vision layers: unit-normalise each token's
    channels per layer, squared difference, mean over tokens, sum of layer means (equal weights,
    no learned linear heads).  0 for identical images.  Named toy-LPIPS: not the standard LPIPS."""
    ha, hb = features.hidden_states([a]), features.hidden_states([b])
    total = 0.0
    for x, y in zip(ha, hb):
        total += float(((F.normalize(x, dim=-1) - F.normalize(y, dim=-1)) ** 2).sum(-1).mean())
    return total


# SqueezeNet 1.1 (Iandola et al. 2016) in torchvision's layout, so its ImageNet checkpoint loads
# as is; written here because torchvision's wheels do not import beside the pinned CPU torch of
# the tests, and LPIPS needs only these 13 feature modules.
SQUEEZENET_URL = "https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth"
_LPIPS_SLICES = ((0, 2), (2, 5), (5, 8), (8, 10), (10, 11), (11, 12), (12, 13))  # LPIPS' 7 taps
_LPIPS_SHIFT = (-0.030, -0.088, -0.188)  # LPIPS' ScalingLayer
_LPIPS_SCALE = (0.458, 0.448, 0.450)


class _Fire(torch.nn.Module):
    def __init__(self, inp: int, squeeze: int, expand: int):
        super().__init__()
        self.squeeze = torch.nn.Conv2d(inp, squeeze, 1)
        self.expand1x1 = torch.nn.Conv2d(squeeze, expand, 1)
        self.expand3x3 = torch.nn.Conv2d(squeeze, expand, 3, padding=1)

    def forward(self, x):
        x = F.relu(self.squeeze(x))
        return torch.cat([F.relu(self.expand1x1(x)), F.relu(self.expand3x3(x))], 1)


def squeezenet11_features() -> torch.nn.Sequential:
    """SqueezeNet 1.1's feature extractor, module for module as torchvision's ``features``."""
    pool = lambda: torch.nn.MaxPool2d(3, 2, ceil_mode=True)  # noqa: E731
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 64, 3, stride=2), torch.nn.ReLU(), pool(), _Fire(64, 16, 64), _Fire(128, 16, 64),
        pool(), _Fire(128, 32, 128), _Fire(256, 32, 128), pool(), _Fire(256, 48, 192), _Fire(384, 48, 192),
        _Fire(384, 64, 256), _Fire(512, 64, 256))


def _squeezenet11_weights() -> dict:
    """torchvision's ImageNet checkpoint of SqueezeNet 1.1, from the torch hub cache (fetched once
    when online).  Offline without it: a clear error naming the file."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(SQUEEZENET_URL).name
    try:
        if not path.exists():
            torch.hub.download_url_to_file(SQUEEZENET_URL, str(path), progress=False)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise RuntimeError(
            f"LPIPS (PIE-Bench's, SqueezeNet backbone) needs SqueezeNet 1.1's ImageNet weights, {path.name} "
            f"({SQUEEZENET_URL}), and could not read or fetch them ({type(e).__name__}: {e}). Put the file in "
            f"{path.parent} (TORCH_HOME moves it), or on the toy profile pass features=clip_features() "
            "for toy-LPIPS") from e
    return {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}


class SqueezeLPIPS(torch.nn.Module):
    """LPIPS (Zhang et al. 2018, Eq. 1) with the SqueezeNet backbone, as torchmetrics computes it
    (PIE-Bench's evaluation code calls torchmetrics' ``LearnedPerceptualImagePatchSimilarity
    (net_type="squeeze")``): inputs scaled by LPIPS' ScalingLayer, the 7 feature taps unit-normalised
    over channels, squared differences weighted by the learned 1x1 heads (torchmetrics' own
    ``lpips_models/squeeze.pth``), averaged over space, summed over taps."""

    def __init__(self, backbone: dict | None = None):
        super().__init__()
        self.features = squeezenet11_features()
        self.features.load_state_dict(_squeezenet11_weights() if backbone is None else backbone)
        heads = torch.load(_lpips_heads_path(), map_location="cpu", weights_only=True)
        self.heads = torch.nn.ParameterList([heads[f"lin{k}.model.1.weight"] for k in range(len(_LPIPS_SLICES))])
        self.register_buffer("shift", torch.tensor(_LPIPS_SHIFT)[None, :, None, None])
        self.register_buffer("scale", torch.tensor(_LPIPS_SCALE)[None, :, None, None])
        self.requires_grad_(False).eval()

    def taps(self, x):
        x = (x - self.shift) / self.scale
        out = []
        for start, stop in _LPIPS_SLICES:
            for module in self.features[start:stop]:
                x = module(x)
            out.append(x)
        return out

    def forward(self, x, y):
        unit = lambda f: f / torch.sqrt(1e-8 + (f ** 2).sum(1, keepdim=True))  # noqa: E731  (LPIPS' eps)
        total = 0
        for head, fx, fy in zip(self.heads, self.taps(x), self.taps(y)):
            total = total + F.conv2d((unit(fx) - unit(fy)) ** 2, head).mean([2, 3])
        return total.flatten()


def _lpips_heads_path() -> Path:
    import torchmetrics.functional.image.lpips as tm_lpips

    return Path(tm_lpips.__file__).parent / "lpips_models" / "squeeze.pth"


_LPIPS_NET: list = []


def lpips(a, b, features: ClipFeatures | None = None, inputs: str = "pie-bench") -> float:
    """LPIPS (Zhang et al. 2018) as PIE-Bench's evaluation code computes it: SqueezeNet backbone
    (:class:`SqueezeLPIPS`, torchmetrics' computation), fed the images on [0, 1] without
    ``normalize=True`` (``inputs="pie-bench"``: the benchmark's own convention, kept so that numbers
    compare with its tables; ``inputs="standard"`` feeds [-1, 1] as LPIPS expects).  Needs SqueezeNet
    1.1's ImageNet weights (fetched once into the torch hub cache).  With ``features=toy-clip`` it is
    the toy recipe :func:`toy_lpips` (toy-LPIPS) instead."""
    if features is not None:
        return toy_lpips(features, a, b)
    if inputs not in ("pie-bench", "standard"):
        raise ValueError(f"inputs is 'pie-bench' ([0, 1], as the benchmark feeds them) or 'standard' ([-1, 1]); "
                         f"got {inputs!r}")
    x, y = (_to_unit_tensor(v).float() for v in _pair(a, b))
    if inputs == "standard":
        x, y = 2 * x - 1, 2 * y - 1
    if not _LPIPS_NET:
        _LPIPS_NET.append(SqueezeLPIPS())
    with torch.no_grad():
        return float(_LPIPS_NET[0](x, y)[0])


def structure_distance(keys_fn, a, b) -> float:
    """PIE-Bench structure distance (Tumanyan et al. 2022): MSE between the self-similarity
    (cosine) matrices of the last-layer keys of a ViT (DINO ViT-B/8 in sd15).  `keys_fn(image)`
    returns (tokens, dim) keys; use :func:`dino_keys` or :func:`toy_keys`."""
    ka, kb = keys_fn(a), keys_fn(b)
    sa = F.normalize(ka, dim=-1) @ F.normalize(ka, dim=-1).T
    sb = F.normalize(kb, dim=-1) @ F.normalize(kb, dim=-1).T
    return float(F.mse_loss(sa, sb))


def toy_keys(features: ClipFeatures):
    """Keys of the last toy-clip vision layer (the toy stand-in for DINO keys: toy-structure)."""
    enc = features.model.vision_model.encoder.layers[-1]

    def keys(image):
        captured = {}
        h = enc.self_attn.k_proj.register_forward_hook(lambda m, i, o: captured.setdefault("k", o))
        try:
            features.hidden_states([image])
        finally:
            h.remove()
        return captured["k"][0, 1:].float()

    return keys


def dino_keys(model, processor):
    """Keys of the last layer of a transformers ViT (DINO) for :func:`structure_distance`."""
    # transformers >= 5 names the layers model.layers[i].attention.k_proj (4.x: encoder.layer[i].attention.attention.key)
    last = model.layers[-1] if hasattr(model, "layers") else model.encoder.layer[-1]
    key = last.attention.k_proj if hasattr(last.attention, "k_proj") else last.attention.attention.key

    @torch.no_grad()
    def keys(image):
        captured = {}
        h = key.register_forward_hook(lambda m, i, o: captured.setdefault("k", o))
        try:
            px = processor(images=[to_numpy(image)], return_tensors="pt").pixel_values.to(model.device, model.dtype)
            model(pixel_values=px)
        finally:
            h.remove()
        return captured["k"][0].float()

    return keys


#: ImageNet normalisation (DINO's training statistics)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _magicbrush_dino_pixels(image, resize: int = 256, crop: int = 224) -> torch.Tensor:
    """MagicBrush's DINO transform: shorter side to 256 (bicubic), centre crop 224, ImageNet
    normalisation (torchvision's Resize / CenterCrop arithmetic)."""
    from PIL import Image

    im = Image.fromarray(to_numpy(image))
    w, h = im.size
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(resize * long / short)
    im = im.resize((resize, new_long) if w <= h else (new_long, resize), Image.BICUBIC)
    w, h = im.size
    top, left = int(round((h - crop) / 2.0)), int(round((w - crop) / 2.0))
    x = np.asarray(im.crop((left, top, left + crop, top + crop)), np.float32) / 255.0
    x = (x - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
    return torch.from_numpy(x.transpose(2, 0, 1).copy())


@torch.no_grad()
def dino_embeddings(model, images) -> torch.Tensor:
    """Unit-norm DINO image embeddings as MagicBrush computes them: the [CLS] token of the last
    layer after the final norm (what torch hub's ``dino_vits16`` returns; a transformers
    ``ViTModel``'s ``last_hidden_state[:, 0]``), on :func:`_magicbrush_dino_pixels`."""
    ims = images if isinstance(images, (list, tuple)) else [images]
    px = torch.stack([_magicbrush_dino_pixels(im) for im in ims]).to(model.device, model.dtype)
    return F.normalize(model(pixel_values=px).last_hidden_state[:, 0].float(), dim=-1)


def dino_similarity(model, images_a, images_b) -> np.ndarray:
    """MagicBrush's DINO score: cosine similarity of the DINO ViT-S/16 embeddings (registry
    ``"dino-s16"``) of each output and its ground-truth target."""
    _same_length(images_a=images_a, images_b=images_b)
    return _cos(dino_embeddings(model, images_a), dino_embeddings(model, images_b)).cpu().numpy()


@torch.no_grad()
def toy_dino_similarity(features: ClipFeatures, images_a, images_b) -> np.ndarray:
    """toy-DINO: the DINO score's recipe (cosine of the vision transformer's final-norm [CLS]
    token, before any projection) on toy-clip's vision tower; not comparable to DINO figures."""
    _same_length(images_a=images_a, images_b=images_b)
    def cls(images):
        ims = [to_numpy(im) for im in (images if isinstance(images, (list, tuple)) else [images])]
        px = features.processor(images=ims, return_tensors="pt").pixel_values.to(features.device, features.model.dtype)
        return F.normalize(features.model.vision_model(pixel_values=px).pooler_output.float(), dim=-1)

    return _cos(cls(images_a), cls(images_b)).cpu().numpy()


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (the FID formula,
    Heusel et al. 2017): |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2).  With Inception
    pool features it is FID; with toy-clip image embeddings we call it toy-FID."""
    from scipy import linalg

    a, b = np.asarray(feats_a, np.float64), np.asarray(feats_b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets must be (n, d) with the same d; got {a.shape} and {b.shape}")
    if min(len(a), len(b)) < 2:
        raise ValueError("each set needs at least 2 images for a covariance")
    mu_a, mu_b = a.mean(0), b.mean(0)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean, _ = linalg.sqrtm(sa @ sb, disp=False)
    if not np.isfinite(covmean).all():  # numerical safety, as in the reference implementation
        eps = np.eye(len(sa)) * 1e-6
        covmean = linalg.sqrtm((sa + eps) @ (sb + eps))
    covmean = covmean.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(sa) + np.trace(sb) - 2 * np.trace(covmean))


def toy_fid(features: ClipFeatures, images_a, images_b) -> float:
    """toy-FID: Fréchet distance of toy-clip image embeddings (not comparable to Inception FID)."""
    return frechet_distance(features.images(list(images_a)).cpu().numpy(), features.images(list(images_b)).cpu().numpy())


# ------------------------------------------------------------------ retrieval


def retrieval_metrics(similarity, relevant, k: int = 10) -> dict[str, float]:
    """EditCLIP Table 2: AUC, MAP@k, Recall@k, Precision@k for queries against a gallery, and ROC AUC.

    `similarity` (queries, gallery) scores; `relevant` (queries, gallery) booleans.  Each query's
    gallery is ranked by score (ties in gallery order); with R relevant items and P(i) the precision
    in the top i:

    - AP@k = sum of P(i) over the relevant items in the top k, divided by min(k, R) (the relevant
      items the top k could hold), so AP@k <= AP; MAP@k is its mean over the queries;
    - "AUC": the supplement does not define it, but for every method its value sits just above
      MAP@10 (0.201/0.160, 0.140/0.104, 0.095/0.069).  The area under the precision-recall curve over
      the whole ranking gives that (step-wise it is AP, the sum over all R relevant items divided by
      R) and ROC AUC cannot (a ranker better than chance scores > 0.5): the course's reading;
    - Recall@k = relevant items in the top k / R; Precision@k = relevant items in the top k / k;
    - "ROC AUC": scikit-learn's, per query, under its own name.

    (torchmetrics' AP@k divides by the relevant items *found* in the top k instead, which can exceed
    AP; with it the toy's baselines score MAP@10 above AUC, unlike every row of the paper.)  Every
    column is averaged over the queries that have a relevant item (ROC AUC: and an irrelevant one)."""
    from sklearn.metrics import roc_auc_score

    s = torch.as_tensor(np.asarray(similarity), dtype=torch.float64)
    r = torch.as_tensor(np.asarray(relevant), dtype=torch.bool)
    if s.shape != r.shape or s.ndim != 2:
        raise ValueError(f"similarity and relevant must be (queries, gallery) of the same shape; got {tuple(s.shape)} and {tuple(r.shape)}")
    rows = []
    for q in range(s.shape[0]):
        n_relevant = int(r[q].sum())
        if not n_relevant:
            continue
        hits = r[q][torch.sort(s[q], descending=True, stable=True).indices].double()
        precision = hits.cumsum(0) / torch.arange(1, len(hits) + 1, dtype=torch.float64)
        roc = roc_auc_score(r[q].numpy(), s[q].numpy()) if n_relevant < len(hits) else float("nan")
        rows.append((float((precision * hits).sum()) / n_relevant,
                     float((precision[:k] * hits[:k]).sum()) / min(k, n_relevant),
                     float(hits[:k].sum()) / n_relevant, float(hits[:k].sum()) / k, roc))
    if not rows:
        raise ValueError("no query has a relevant item in the gallery")
    area, ap_k, recall, prec_k, roc = np.array(rows).T
    return {"AUC": float(area.mean()), f"MAP@{k}": float(ap_k.mean()), f"Recall@{k}": float(recall.mean()),
            f"Precision@{k}": float(prec_k.mean()),
            "ROC AUC": float(np.nanmean(roc)) if not np.isnan(roc).all() else float("nan")}


# ------------------------------------------------------------------ Elo (UIP2P supplement Sec. 3)

ELO_START, ELO_K = 1500.0, 32.0


def elo_expected(r_a: float, r_b: float) -> float:
    """Expected score of A against B: 1 / (1 + 10^((R_B - R_A) / 400))."""
    return 1.0 / (1.0 + 10.0 ** ((r_b - r_a) / 400.0))


def elo_update(r_a: float, r_b: float, score_a: float, k: float = ELO_K) -> tuple[float, float]:
    """One game: score_a is 1 (A wins), 0 (B wins) or 0.5 (tie).  The rating sum is preserved."""
    if score_a not in (0, 0.5, 1):
        raise ValueError(f"score must be 1 (A wins), 0 (B wins) or 0.5 (tie), got {score_a}")
    e_a = elo_expected(r_a, r_b)
    return r_a + k * (score_a - e_a), r_b + k * ((1 - score_a) - (1 - e_a))


def elo_leaderboard(votes, start: float = ELO_START, k: float = ELO_K) -> list[tuple[str, float, int]]:
    """Pairwise votes ``[(a, b, winner)]`` (winner: a, b or None for a tie), in order ->
    [(name, rating, games)] sorted best first."""
    ratings: dict[str, float] = {}
    games: dict[str, int] = {}
    for a, b, winner in votes:
        if winner not in (a, b, None):
            raise ValueError(f"winner {winner!r} is neither {a!r} nor {b!r}")
        ra, rb = ratings.setdefault(a, start), ratings.setdefault(b, start)
        score = 0.5 if winner is None else float(winner == a)
        ratings[a], ratings[b] = elo_update(ra, rb, score, k)
        games[a], games[b] = games.get(a, 0) + 1, games.get(b, 0) + 1
    return sorted(((n, r, games[n]) for n, r in ratings.items()), key=lambda x: -x[1])


def magicbrush_metrics(features: ClipFeatures, output, target, caption: str, source=None, mask=None,
                       dino=None) -> dict:
    """MagicBrush's metrics of one output against the ground-truth target image: L1 and L2 on
    [0, 1] images, CLIP-I (output vs target image) and CLIP-T (output vs the target's local
    caption) with CLIP ViT-B/32 (``clip_features("clip-b32")``), DINO (output vs target) with
    DINO ViT-S/16 (``dino=load("dino-s16")[0]``; in the toy profile toy-DINO on the toy-clip
    features); with `source` and `mask` also the PSNR of the unedited region (background
    preservation).  With toy-clip features CLIP-I/CLIP-T are toy figures."""
    toy = features.name.startswith("toy-")
    if not toy and features.name != "clip-b32":
        raise ValueError(f"MagicBrush's CLIP-I and CLIP-T use CLIP ViT-B/32; got {features.name!r} features: "
                         "pass clip_features('clip-b32')")
    out = {"L1": l1(output, target), "L2": l2(output, target),
           "CLIP-I": float(clip_image_similarity(features, [output], [target])[0]),
           "CLIP-T": float(clip_similarity(features, [output], [caption])[0])}
    if dino is not None:
        out["DINO"] = float(dino_similarity(dino, [output], [target])[0])
    elif toy:
        out["toy-DINO"] = float(toy_dino_similarity(features, [output], [target])[0])
    if source is not None and mask is not None:
        out["BG PSNR"] = min(psnr(source, output, mask, "background"), 100.0)
    return out
