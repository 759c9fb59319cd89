"""CLIP features: one wrapper for measuring (metrics) and for training through (iEdit's losses)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .images import to_numpy
from .models import load, tokenize
from .runtime import current


@dataclass
class ClipFeatures:
    """Unit-norm CLIP image and text embeddings from any CLIPModel + processor.

    ``images``/``texts``/``hidden_states`` measure (no gradients, any image type);
    ``pixel_features``/``pixel_hidden_states``/``distance`` take tensors in [-1, 1] and stay
    differentiable in the image (iEdit's CLIP losses train through them)."""

    model: object
    processor: object
    name: str = "clip"

    @property
    def device(self):
        return next(self.model.parameters()).device

    @torch.no_grad()
    def images(self, images) -> torch.Tensor:
        ims = [to_numpy(im) for im in (images if isinstance(images, (list, tuple)) else [images])]
        px = self.processor(images=ims, return_tensors="pt").pixel_values.to(self.device, self.model.dtype)
        return F.normalize(_pooled(self.model.get_image_features(pixel_values=px)).float(), dim=-1)

    @torch.no_grad()
    def texts(self, texts) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        ids = tokenize(self.processor.tokenizer, texts).to(self.device)
        return F.normalize(_pooled(self.model.get_text_features(input_ids=ids)).float(), dim=-1)

    @torch.no_grad()
    def hidden_states(self, images) -> list[torch.Tensor]:
        """Vision-tower hidden states (patch tokens) of every layer, for LPIPS-style and
        structure metrics with toy features."""
        ims = [to_numpy(im) for im in (images if isinstance(images, (list, tuple)) else [images])]
        px = self.processor(images=ims, return_tensors="pt").pixel_values.to(self.device, self.model.dtype)
        out = self.model.vision_model(pixel_values=px, output_hidden_states=True)
        return [h[:, 1:].float() for h in out.hidden_states[1:]]

    def _pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] -> CLIP pixel values, resized and normalised in the graph."""
        ip = self.processor.image_processor
        crop = ip.crop_size
        size = int(crop["height"] if hasattr(crop, "__getitem__") and not isinstance(crop, int) else crop)
        x = F.interpolate((x + 1) / 2, size=(size, size), mode="bilinear", align_corners=False)
        x = (x - torch.tensor(ip.image_mean).reshape(1, 3, 1, 1).to(x)) / torch.tensor(ip.image_std).reshape(1, 3, 1, 1).to(x)
        return x.to(self.model.dtype)

    def pixel_features(self, x: torch.Tensor) -> torch.Tensor:
        """Unit-norm image embeddings of tensors in [-1, 1], differentiable in `x`."""
        return F.normalize(_pooled(self.model.get_image_features(pixel_values=self._pixels(x))).float(), dim=-1)

    def pixel_hidden_states(self, x: torch.Tensor) -> tuple:
        """Vision-tower hidden states (all tokens) of every layer, differentiable in `x`."""
        return self.model.vision_model(pixel_values=self._pixels(x), output_hidden_states=True).hidden_states[1:]

    def distance(self, x: torch.Tensor, texts) -> torch.Tensor:
        """D_CLIP(x, y) = 1 - cos(CLIP image(x), CLIP text(y)) per item, differentiable in `x`."""
        return 1 - (self.pixel_features(x) * self.texts(texts).to(x.device)).sum(-1)


def _pooled(out):
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def clip_features(name: str = "clip", profile: str | None = None) -> ClipFeatures:
    """CLIP features from the registry ('clip' = ViT-L/14, 'clip-b32' = ViT-B/32; toy-clip in toy)."""
    profile = profile or current().profile
    model, processor = load(name, profile=profile)
    return ClipFeatures(model, processor, name=f"toy-{name}" if profile == "toy" else name)
