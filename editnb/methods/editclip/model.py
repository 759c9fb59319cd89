"""EditCLIP's pair encoder: a CLIP vision tower whose patch embedding sees the input image and the
edited image concatenated along channels (6 channels), trained contrastively against the edit
instruction with the text tower frozen; and the projection that turns its last hidden states into
the condition of the exemplar UNet.

Official code (a modified OpenCLIP): the ViT-L/14 patch-embedding conv gets 6 input channels, the
RGB weights copied into channels 0-2 and zeros in 3-5, so at initialisation the encoder sees only
the input image and is exactly CLIP on it.  The Hub checkpoint ``QWW/EditCLIP`` is a transformers
CLIPModel with ``vision_config.num_channels = 6``; ``toy-editclip`` is the same class.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ...images import to_numpy
from ...models import tokenize


def six_channel_patch_embedding(conv: torch.nn.Conv2d) -> torch.nn.Conv2d:
    """A copy of an RGB patch-embedding conv with 6 input channels: the RGB weights in channels
    0-2 (the input image), zeros in 3-5 (the edited image)."""
    if conv.in_channels != 3:
        raise ValueError(f"expected an RGB patch embedding (3 input channels), got {conv.in_channels}")
    new = torch.nn.Conv2d(6, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                          bias=conv.bias is not None).to(conv.weight.device, conv.weight.dtype)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, :3].copy_(conv.weight)
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new


def pair_encoder_from_clip(clip):
    """A 6-channel CLIPModel initialised from an RGB CLIPModel (the official initialisation)."""
    from transformers import CLIPModel

    config = clip.config.__class__.from_dict(clip.config.to_dict())
    config.vision_config.num_channels = 6
    model = CLIPModel(config).to(clip.device, clip.dtype)
    state = clip.state_dict()
    key = "vision_model.embeddings.patch_embedding.weight"
    state[key] = six_channel_patch_embedding(clip.vision_model.embeddings.patch_embedding).weight.detach()
    model.load_state_dict(state)
    return model


@dataclass
class EditEncoder:
    """The pair encoder E(I_i, I_e) with its CLIP text tower G (frozen).

    - :meth:`embed`: the projected edit embedding (unit norm), in the text tower's space;
    - :meth:`hidden_states`: the last hidden states (all tokens, before the projection), the
      condition of the exemplar UNet (supplement Sec. G.2);
    - :meth:`texts`: unit-norm instruction embeddings (for EC2T).
    Calling the encoder is :meth:`embed`, so it plugs into ``editnb.metrics.ec2t``/``ec2ec``."""

    model: object
    processor: object

    @property
    def device(self):
        return next(self.model.parameters()).device

    def pixels(self, inputs, edited) -> torch.Tensor:
        """(B, 6, H, W) pixel values: each image through CLIP's processor, concatenated.  The six
        channels must show one scene pixel for pixel, so an edited image of another size is first
        resized to its input's (CLIP's centre crop of two aspect ratios would cut two different
        regions); one of another aspect ratio is stretched, with a warning."""
        listed = lambda images: [to_numpy(im) for im in (images if isinstance(images, (list, tuple)) else [images])]  # noqa: E731
        ins, eds = listed(inputs), listed(edited)
        if len(ins) != len(eds):
            raise ValueError(f"{len(ins)} input images but {len(eds)} edited images; give one edited per input")
        eds = [_aligned(e, i.shape[:2], k) for k, (i, e) in enumerate(zip(ins, eds))]
        a = self.processor(images=ins, return_tensors="pt").pixel_values
        b = self.processor(images=eds, return_tensors="pt").pixel_values
        return torch.cat([a, b], 1).to(self.device, self.model.dtype)

    def pixel_pairs(self, x_in: torch.Tensor, x_ed: torch.Tensor) -> torch.Tensor:
        """(B, 6, H, W) pixel values from tensors in [-1, 1] (training batches), resized and
        normalised as the processor does."""
        ip = self.processor.image_processor
        size = ip.crop_size["height"]
        mean = torch.tensor(ip.image_mean * 2).reshape(1, 6, 1, 1).to(x_in)
        std = torch.tensor(ip.image_std * 2).reshape(1, 6, 1, 1).to(x_in)
        x = F.interpolate((torch.cat([x_in, x_ed], 1) + 1) / 2, size=(size, size), mode="bilinear", align_corners=False)
        return ((x - mean) / std).to(self.model.dtype)

    def embed_pixels(self, px: torch.Tensor) -> torch.Tensor:
        out = self.model.vision_model(pixel_values=px)
        return F.normalize(self.model.visual_projection(out.pooler_output).float(), dim=-1)

    def hidden_pixels(self, px: torch.Tensor) -> torch.Tensor:
        return self.model.vision_model(pixel_values=px).last_hidden_state

    @torch.no_grad()
    def embed(self, inputs, edited) -> torch.Tensor:
        return self.embed_pixels(self.pixels(inputs, edited))

    __call__ = embed

    @torch.no_grad()
    def hidden_states(self, inputs, edited) -> torch.Tensor:
        return self.hidden_pixels(self.pixels(inputs, edited))

    @torch.no_grad()
    def texts(self, texts) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        ids = tokenize(self.processor.tokenizer, texts).to(self.device)
        out = self.model.get_text_features(input_ids=ids)
        out = out if isinstance(out, torch.Tensor) else out.pooler_output
        return F.normalize(out.float(), dim=-1)


def load_encoder(profile: str | None = None, device=None, dtype=None) -> EditEncoder:
    """The pair encoder of the registry ('editclip': QWW/EditCLIP in sd15, toy-editclip in toy)."""
    from ...models import load

    return EditEncoder(*load("editclip", profile=profile, device=device, dtype=dtype))


def new_projection(hidden_size: int, cross_attention_dim: int, tokens_per_state: int = 1) -> torch.nn.Sequential:
    """The small projection of the official code: Linear to `tokens_per_state` x cross-attention
    dim per hidden state, then LayerNorm.  (B, n, hidden) -> (B, n x tokens_per_state, cross)."""
    if tokens_per_state != 1:
        raise ValueError("the toy projection maps each hidden state to one token (tokens_per_state=1)")
    return torch.nn.Sequential(torch.nn.Linear(hidden_size, cross_attention_dim), torch.nn.LayerNorm(cross_attention_dim))


def reinitialise_projection(projection: torch.nn.Sequential, seed: int = 0) -> torch.nn.Sequential:
    """Draw `projection`'s Linear afresh from nn.Linear's default range with a seeded generator
    (the same weights for the same seed on any device) and reset its LayerNorm, in place: a
    projection that carries no learned edit (the control of Table 1, and the editor of profiles
    without trained weights)."""
    linear, norm = projection[0], projection[1]
    gen = torch.Generator().manual_seed(seed)
    bound = 1 / linear.in_features ** 0.5  # nn.Linear's default range, drawn from our generator
    with torch.no_grad():
        for p in (linear.weight, linear.bias):
            p.copy_(torch.rand(p.shape, generator=gen).mul(2 * bound).sub(bound))
    norm.reset_parameters()
    return projection


def _aligned(edited: np.ndarray, size: tuple[int, int], k: int) -> np.ndarray:
    """`edited` at the (H, W) of its input image (bicubic), warning when the aspect ratios differ."""
    if edited.shape[:2] == tuple(size):
        return edited
    import warnings

    from PIL import Image

    (h, w), (eh, ew) = size, edited.shape[:2]
    if abs(np.log((eh / ew) / (h / w))) > 0.02:
        warnings.warn(f"pair {k}: the edited image is {ew}x{eh} but its input {w}x{h}, another aspect ratio; it was "
                      "stretched to the input's size so that the pair lines up. Crop both alike to avoid the stretch",
                      stacklevel=3)
    return np.asarray(Image.fromarray(edited).resize((w, h), Image.BICUBIC))
