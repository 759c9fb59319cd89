"""Each weight tensor of the ToyWorld family stored once (``data/models`` travels with the repository)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from ..models import models_dir


def share_weights(root: Path | None = None) -> None:
    """Store each weight tensor of the family once, so data/models stays small: toy-clip becomes a
    sharded checkpoint whose text shard is exactly a CLIPTextModel and whose vision shard is exactly
    a CLIPVisionModelWithProjection, and the pipelines' copies (text encoders, the IP-Adapter's
    image encoder, the VAEs) become relative symbolic links to those files when, and only when,
    they hold the same tensors.  Idempotent; every folder still loads with from_pretrained."""
    from safetensors.torch import load_file, save_file

    root = Path(root) if root else models_dir()
    clip = root / "toy-clip"
    whole = clip / "model.safetensors"
    if whole.exists() and not whole.is_symlink():
        state = load_file(str(whole))
        shards = {"model-text.safetensors": lambda k: k.startswith("text_model."),
                  "model-vision.safetensors": lambda k: k.startswith(("vision_model.", "visual_projection.")),
                  "model-heads.safetensors": lambda k: not k.startswith(("text_model.", "vision_model.",
                                                                         "visual_projection."))}
        weight_map = {}
        for name, belongs in shards.items():
            part = {k: v for k, v in state.items() if belongs(k)}
            save_file(part, str(clip / name), metadata={"format": "pt"})
            weight_map.update({k: name for k in part})
        total = sum(v.numel() * v.element_size() for v in state.values())
        (clip / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, indent=1))
        whole.unlink()

    def same_tensors(a: Path, b: Path) -> bool:
        if not (a.exists() and b.exists()):
            return False
        x, y = load_file(str(a)), load_file(str(b))
        return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)

    def link(path: Path, target: Path) -> None:
        if path.is_symlink() or not same_tensors(path, target):
            return
        path.unlink()
        path.symlink_to(os.path.relpath(target, path.parent))

    for pipe in ("toy-sd", "toy-ip2p"):
        link(root / pipe / "text_encoder" / "model.safetensors", clip / "model-text.safetensors")
        vae = root / pipe / "vae"
        if vae.is_dir() and not vae.is_symlink() and same_tensors(vae / "diffusion_pytorch_model.safetensors",
                                                                root / "toy-vae" / "diffusion_pytorch_model.safetensors"):
            shutil.rmtree(vae)
            vae.symlink_to("../toy-vae")
    link(root / "toy-ip-adapter" / "models" / "image_encoder" / "model.safetensors", clip / "model-vision.safetensors")
