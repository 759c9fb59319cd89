"""Images in and out: load from anything, convert to RGB, fit to a model's resolution, tensors to
and from PIL, labelled grids.  Bad input raises a ``ValueError`` that says what was wrong."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

def load_image(image) -> Image.Image:
    """A path, PIL image, array (H, W[, C]) or tensor (C, H, W) / (1, C, H, W) -> RGB PIL image.

    Arrays are uint8 in [0, 255], uint16 in [0, 65535] or float in [0, 1]; float tensors are in
    [-1, 1] (the VAE's range, what :func:`pil_to_tensor` gives), uint8 tensors in [0, 255].
    RGBA is composited on white; greyscale (8- or 16-bit) and palette images become RGB.
    """
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.exists():
            raise ValueError(f"image file {str(path)!r} does not exist")
        try:
            with Image.open(path) as im:
                im.load()
                pil = im.copy()
        except (UnidentifiedImageError, OSError) as e:
            raise ValueError(f"cannot read {str(path)!r} as an image ({e})") from None
    elif isinstance(image, Image.Image):
        pil = image
    elif isinstance(image, np.ndarray):
        pil = _array_to_pil(image)
    elif _is_tensor(image):
        if image.ndim == 4 and image.shape[0] != 1:
            raise ValueError(f"a batch of {image.shape[0]} images (tensor of shape {tuple(image.shape)}) where one "
                             "image is expected; pass them one at a time (tensor[k]) or as a list")
        image = image[0] if image.ndim == 4 else image
        if image.is_floating_point() and image.numel() and float(image.min()) >= 0 and float(image.max()) <= 1:
            import warnings

            # decoded images are never this bright in practice; a [0, 1] tensor would come out washed out
            warnings.warn(f"the image tensor has no negative values (range [0, {float(image.max()):.3g}]): editnb "
                          "reads float tensors as [-1, 1]; if it is in [0, 1], convert it with x * 2 - 1",
                          stacklevel=2)
        return tensor_to_pil(image)
    else:
        raise ValueError(f"cannot make an image from a {type(image).__name__}; pass a path, a PIL image, "
                         "a numpy array or a torch tensor")
    if pil.width == 0 or pil.height == 0:
        raise ValueError(f"the image is empty ({pil.width}x{pil.height})")
    # a phone photo stores its pixels as the sensor saw them and the turn in EXIF: apply it, as
    # diffusers' load_image does (without the tag, the same image)
    return _to_rgb(ImageOps.exif_transpose(pil))


def _is_tensor(x) -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover
        return False
    return isinstance(x, torch.Tensor)


def _to_rgb(pil: Image.Image) -> Image.Image:
    if pil.mode == "RGB":
        return pil
    if pil.mode.startswith("I") or pil.mode == "F":
        # PIL's own conversion clips these modes at 255, which turns a 16-bit greyscale PNG white
        return _array_to_pil(_wide_grey(np.asarray(pil), pil.mode)).convert("RGB")
    if pil.mode == "P":
        pil = pil.convert("RGBA")
    if pil.mode in ("RGBA", "LA"):
        rgba = pil.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return pil.convert("RGB")


def _wide_grey(arr: np.ndarray, mode: str) -> np.ndarray:
    """A greyscale image of PIL mode I;16*, I (32-bit int) or F as uint8."""
    if mode.startswith("I;16"):
        return _from_uint16(arr.astype(np.uint16))
    lo, hi = float(arr.min()), float(arr.max())
    if mode == "F" and lo >= 0 and hi <= 1:
        return np.rint(arr * 255).astype(np.uint8)
    if lo < 0 or hi > 65535:
        raise ValueError(f"a greyscale image of mode {mode} with values in [{lo:.6g}, {hi:.6g}]; "
                         "save it as 8- or 16-bit (values in [0, 255] or [0, 65535])")
    # mode I holds 16-bit PNGs on older Pillow; values above 255 can only be 16-bit data
    return _from_uint16(arr.astype(np.uint16)) if hi > 255 else arr.astype(np.uint8)


def _from_uint16(arr: np.ndarray) -> np.ndarray:
    return np.rint(arr.astype(np.float32) / 257.0).astype(np.uint8)


def _array_to_pil(arr: np.ndarray) -> Image.Image:
    if arr.size == 0:
        raise ValueError(f"the image array is empty (shape {arr.shape})")
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        raise ValueError(f"array of shape {arr.shape} looks channels-first; images as arrays are (H, W, C)")
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise ValueError(f"an image array must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); got shape {arr.shape}")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise ValueError("the image array contains NaN or infinite values")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise ValueError(f"float image arrays must be in [0, 1]; got values in [{lo:.3g}, {hi:.3g}] "
                             "(for uint8 data pass dtype uint8)")
        arr = np.rint(np.clip(arr, 0, 1) * 255).astype(np.uint8)
    elif arr.dtype == np.uint16:
        arr = _from_uint16(arr)
    elif arr.dtype != np.uint8:
        raise ValueError(f"unsupported image dtype {arr.dtype}; use uint8 in [0, 255], uint16 in [0, 65535] "
                         "or float in [0, 1]")
    return Image.fromarray(np.ascontiguousarray(arr))  # mode L, RGB or RGBA from the shape


def to_numpy(image) -> np.ndarray:
    """Anything :func:`load_image` takes -> uint8 array (H, W, 3)."""
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3:
        return image
    return np.asarray(load_image(image))


def fit(image, size: int) -> Image.Image:
    """Resize (shorter side to `size`, bicubic) and centre-crop to `size` x `size`.

    `size` must be a multiple of 8 (the VAE downsamples by 4 in the toy profile and 8 in sd15).
    """
    if size <= 0 or size % 8:
        raise ValueError(f"size must be a positive multiple of 8, got {size}")
    pil = load_image(image)
    w, h = pil.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        pil = pil.resize((nw, nh), Image.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return pil.crop((left, top, left + size, top + size))


def vae_factor(vae) -> int:
    """How many pixels one latent cell spans on a side: 2 per downsampling level (SD 1.5: 8; toy: 4)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def latent_hw(unet) -> tuple[int, int]:
    """A UNet's own latent (height, width): its ``sample_size``, an int or an (h, w) pair."""
    size = unet.config.sample_size
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def latent_side(unet) -> int:
    """The side of a UNet's own square latent, or a ValueError: the editing methods fit images to it."""
    h, w = latent_hw(unet)
    if h != w:
        raise ValueError(f"this UNet's own sample size is {h}x{w} latents, not square; the editing methods fit "
                         "images to a square model size, so generate with text_to_image(size=(height, width))")
    return h


def model_resolution(pipe_or_vae) -> int:
    """The pixel resolution a pipeline (or a UNet/VAE pair) is built for, read from its config."""
    unet = getattr(pipe_or_vae, "unet", None)
    vae = getattr(pipe_or_vae, "vae", None)
    if unet is not None and vae is not None:
        factor = vae_factor(vae)
        return latent_side(unet) * factor
    if hasattr(pipe_or_vae, "config") and "sample_size" in pipe_or_vae.config:
        return int(pipe_or_vae.config.sample_size)
    raise ValueError(f"cannot tell the resolution of a {type(pipe_or_vae).__name__}; pass a pipeline")


def pil_to_tensor(image, size: int | None = None):
    """Image -> float tensor (1, 3, H, W) in [-1, 1] (the VAE's range), optionally fitted to `size`."""
    import torch

    pil = fit(image, size) if size else load_image(image)
    arr = np.asarray(pil, np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1)[None]


#: how far a float tensor may overshoot [-1, 1] and still be clamped (VAE decodes overshoot a little)
TENSOR_SLACK = 0.1


def tensor_to_pil(tensor) -> Image.Image | list[Image.Image]:
    """Tensor (3, H, W) or (B, 3, H, W) -> PIL image(s): float in [-1, 1] (the VAE's range), or
    uint8 in [0, 255].

    Float values beyond [-1.1, 1.1] are refused, not clamped (a [0, 255] float tensor would turn
    white).
    """
    import torch

    t = tensor.detach().cpu()
    if t.ndim == 4:
        return [tensor_to_pil(x) for x in t]
    if t.ndim != 3 or t.shape[0] not in (1, 3):
        raise ValueError(f"expected a tensor (3, H, W) or (B, 3, H, W) in [-1, 1]; got shape {tuple(t.shape)}")
    if t.dtype == torch.uint8:
        arr = t.permute(1, 2, 0).numpy()
        return Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).convert("RGB")
    if not t.is_floating_point():
        raise ValueError(f"image tensors are float in [-1, 1] or uint8 in [0, 255]; got dtype {t.dtype}")
    t = t.float()
    if not bool(t.isfinite().all()):
        raise ValueError("the image tensor contains NaN or infinite values")
    lo, hi = float(t.min()), float(t.max())
    if lo < -1 - TENSOR_SLACK or hi > 1 + TENSOR_SLACK:
        raise ValueError(f"float image tensors are in [-1, 1] (the VAE's range); got values in [{lo:.3g}, {hi:.3g}]. "
                         "From [0, 255] use x / 127.5 - 1, or pass a uint8 tensor")
    arr = ((t.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).convert("RGB")


#: the level at which a soft mask (a probability map, an anti-aliased PNG) is cut into in/out
MASK_THRESHOLD = 0.5


def as_mask(mask, shape: tuple[int, int] | None = None) -> np.ndarray:
    """A mask from a path, PIL image, array or tensor -> bool array (H, W), True where to edit.

    Soft masks are thresholded at 0.5 of their scale (``MASK_THRESHOLD``): float values in
    [0, 1] (CLIPSeg probabilities, a resized mask), uint8/PIL images in [0, 255] (an anti-aliased
    PNG: white = edit).  Floats outside [0, 1] (logits) are refused: apply a sigmoid first.
    With `shape`, a mask of another size is refused (resize it nearest-neighbour).
    """
    if isinstance(mask, (str, Path)):
        path = Path(mask)
        if not path.exists():
            raise ValueError(f"mask file {str(path)!r} does not exist")
        with Image.open(path) as im:
            mask = im.copy()
    if isinstance(mask, Image.Image):
        mask = _to_rgb(mask).convert("L") if mask.mode != "1" else mask
        arr = np.asarray(mask)
    elif _is_tensor(mask):
        arr = mask.detach().float().cpu().numpy() if mask.is_floating_point() else mask.detach().cpu().numpy()
    else:
        arr = np.asarray(mask)
    arr = arr.reshape(arr.shape[-2:]) if arr.ndim > 2 and all(d == 1 for d in arr.shape[:-2]) else arr
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        arr = arr[..., :3].mean(-1) if np.issubdtype(arr.dtype, np.floating) else arr[..., :3].mean(-1).round().astype(arr.dtype)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"a mask is (H, W) (or (1, H, W), (H, W, 3)); got shape {arr.shape}")
    if arr.dtype == bool:
        out = arr
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise ValueError("the mask contains NaN or infinite values")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0 or hi > 1:
            raise ValueError(f"a float mask is in [0, 1] (1 = edit); got values in [{lo:.3g}, {hi:.3g}]. "
                             "For logits apply a sigmoid first; for [0, 255] data pass uint8")
        out = arr >= MASK_THRESHOLD
    elif np.issubdtype(arr.dtype, np.integer):
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 255:
            raise ValueError(f"an integer mask is 0/1 or in [0, 255]; got values in [{lo}, {hi}]")
        out = arr >= (MASK_THRESHOLD if hi <= 1 else MASK_THRESHOLD * 255)
    else:
        raise ValueError(f"unsupported mask dtype {arr.dtype}; use bool, uint8 or float in [0, 1]")
    if shape is not None and out.shape != tuple(shape):
        raise ValueError(f"the mask is {out.shape[0]}x{out.shape[1]} but must be {shape[0]}x{shape[1]} (the "
                         "model's resolution); resize it nearest-neighbour, e.g. "
                         "PIL.Image.fromarray(mask).resize(size, PIL.Image.NEAREST)")
    return out


def mask_at(mask, shape: tuple[int, int]) -> np.ndarray:
    """A boolean mask of one grid (a feature map's RoI, a latent mask) at another size, nearest
    neighbour: each output pixel takes the cell it falls in, so an exact 2x upscale repeats every
    cell 2x2."""
    import torch
    import torch.nn.functional as F

    m = torch.from_numpy(np.asarray(mask, bool)).float()[None, None]
    return F.interpolate(m, size=tuple(shape), mode="nearest")[0, 0].numpy() > 0.5


def upscale(image, size: int = 256) -> Image.Image:
    """Nearest-neighbour upscaling for display: keeps 64x64 pixels crisp and notebooks small."""
    pil = load_image(image)
    return pil.resize((size, round(pil.height * size / pil.width)), Image.NEAREST)


def grid(images, labels=None, ncols: int | None = None, size: float = 1.8, title: str | None = None,
         row_labels=None):
    """A labelled grid of images (matplotlib figure); images are shown nearest-neighbour."""
    import matplotlib.pyplot as plt

    images = list(images)
    if not images:
        raise ValueError("grid() needs at least one image")
    n = len(images)
    ncols = ncols or n
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows + (0.3 if title else 0)), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if k >= n:
            ax.axis("off")
            continue
        ax.imshow(to_numpy(images[k]), interpolation="nearest")
        if labels is not None and k < len(labels):
            ax.set_title(labels[k], fontsize=8)
        if row_labels is not None and k % ncols == 0 and k // ncols < len(row_labels):
            ax.set_ylabel(row_labels[k // ncols], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def sample_photos() -> dict[str, Image.Image]:
    """Real photographs for the sd15 profile, from scikit-image's bundled data (public domain or
    CC0 as listed in skimage's data README): astronaut, coffee, chelsea (a cat), rocket."""
    try:
        from skimage import data
    except ImportError as e:
        raise RuntimeError("sample photographs come from scikit-image: pip install scikit-image") from e
    return {name: Image.fromarray(getattr(data, name)()).convert("RGB")
            for name in ("astronaut", "coffee", "chelsea", "rocket")}
