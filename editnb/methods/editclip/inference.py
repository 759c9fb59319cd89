"""Exemplar-based editing (supplement Sec. G.3, Eq. 5): the edit embedding E of an exemplar pair
(all last hidden states of the pair encoder, through the small projection) replaces the text
condition of an InstructPix2Pix UNet; the null condition is zeros.  Two guidance scales:

    eps~ = eps(x_t, 0, 0) + s_I [eps(x_t, E(I_i), 0) - eps(x_t, 0, 0)]
                          + s_E [eps(x_t, E(I_i), E) - eps(x_t, E(I_i), 0)]

which is InstructPix2Pix's guidance (Brooks et al. 2023, Eq. 3) with E for the text, so
:class:`editnb.diffusion.Conditioning` runs it (branches "cond", "image", "uncond").
Registered as the benchmark method "editclip".
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import torch

from ... import diffusion
from ...models import EDITCLIP_PROJECTION
from .model import EditEncoder, load_encoder, new_projection

S_E, S_I = 7.0, 1.5  # supplement Sec. G.3 (InstructPix2Pix's suggested practice)
PROJECTION_FILE = "projection.safetensors"  # the toy editor's
OFFICIAL_PROJECTION_FILE = EDITCLIP_PROJECTION  # the released editor's (QWW/EditCLIP-IP2P)


@dataclass
class ExemplarEditor:
    """What exemplar editing needs: the InstructPix2Pix-style pipeline whose UNet was trained on
    edit conditions, the projection into its cross-attention space, and the pair encoder."""

    pipe: object
    projection: torch.nn.Module
    encoder: EditEncoder

    def condition(self, exemplar_inputs, exemplar_edits) -> torch.Tensor:
        """The projected last hidden states of the exemplar pairs, (B, tokens, cross-attention dim)."""
        device, dtype = diffusion.device_dtype(self.pipe)
        h = self.encoder.hidden_states(exemplar_inputs, exemplar_edits)
        proj_param = next(self.projection.parameters())
        with torch.no_grad():
            return self.projection(h.to(proj_param.device, proj_param.dtype)).to(device, dtype)


def load_projection(folder, device=None, dtype=None) -> torch.nn.Sequential:
    """The projection of an exemplar editor's folder: the toy's ``projection.safetensors``, or the
    authors' ``image_proj_model.pt`` (their ImageProjModel's state dict: ``proj`` Linear and ``norm``
    LayerNorm, read without unpickling code)."""
    folder = Path(folder)
    if (folder / PROJECTION_FILE).exists():
        from safetensors.torch import load_file

        state = load_file(str(folder / PROJECTION_FILE))
    elif (folder / OFFICIAL_PROJECTION_FILE).exists():
        official = torch.load(folder / OFFICIAL_PROJECTION_FILE, map_location="cpu", weights_only=True)
        if sorted(official) != ["norm.bias", "norm.weight", "proj.bias", "proj.weight"]:
            raise RuntimeError(f"{folder / OFFICIAL_PROJECTION_FILE} is not EditCLIP's projection (proj.weight, proj.bias, "
                               f"norm.weight, norm.bias); it holds {sorted(official)[:6]}")
        state = {f"{0 if k.startswith('proj') else 1}.{k.split('.')[1]}": v for k, v in official.items()}
    else:
        raise RuntimeError(f"{folder} holds no exemplar-editor projection ({PROJECTION_FILE} or "
                           f"{OFFICIAL_PROJECTION_FILE}); train one with editnb.methods.editclip (the editclip-ip2p task)")
    cross, hidden = state["0.weight"].shape
    proj = new_projection(hidden, cross)
    proj.load_state_dict({k: v.float() for k, v in state.items()})
    return proj.to(device=device, dtype=dtype or torch.float32).eval()


def _editor_folder(profile: str) -> Path:
    """The folder that holds the editor's projection: the toy folder, the sd15-shaped stand-in, or the
    Hub checkpoint's snapshot in the local cache (downloaded by :func:`editnb.models.load` before)."""
    from ...models import REGISTRY, hub_reachable, source_of

    if profile != "sd15":
        return Path(source_of("editclip-ip2p", profile))
    from huggingface_hub import hf_hub_download

    spec = REGISTRY["editclip-ip2p"]
    return Path(hf_hub_download(spec.sd15, spec.sd15_file, local_files_only=not hub_reachable())).parent


def load_editor(profile: str | None = None, device=None, dtype=None) -> ExemplarEditor:
    """The registry's exemplar editor ('editclip-ip2p': its UNet and projection) and pair encoder
    ('editclip').  On sd15 these are the authors' releases, QWW/EditCLIP-IP2P (``unet/`` and
    ``image_proj_model.pt``, on timbrooks/instruct-pix2pix, as their ``eval_ip2p_transfer.py`` loads
    them; they run it at 256 px, 50 steps, s_E 7, s_I 1.5) and QWW/EditCLIP; on toy, the trained
    toy-editclip-ip2p and toy-editclip.  A projection that does not join the encoder's width to the
    UNet's cross-attention width is refused."""
    from ...models import load
    from ...runtime import current

    profile = profile or current().profile
    pipe = load("editclip-ip2p", profile=profile, device=device, dtype=dtype)
    encoder = load_encoder(profile, device=device, dtype=dtype)
    proj = load_projection(_editor_folder(profile), device=diffusion.execution_device(pipe), dtype=pipe.unet.dtype)
    linear = proj[0]
    widths = (encoder.model.config.vision_config.hidden_size, pipe.unet.config.cross_attention_dim)
    if (linear.in_features, linear.out_features) != widths:
        raise RuntimeError(f"the {profile} exemplar editor's projection maps {linear.in_features} -> {linear.out_features}, "
                           f"but its pair encoder's hidden states are {widths[0]} wide and its UNet's cross-attention "
                           f"{widths[1]}: the editor and the encoder come from different checkpoints")
    return ExemplarEditor(pipe, proj, encoder)


def exemplar_edit(editor: ExemplarEditor, image, exemplar_input, exemplar_edited, s_E: float = S_E,
                  s_I: float = S_I, steps: int = 50, generator=None, scheduler: str = "ddim",
                  condition: torch.Tensor | None = None) -> diffusion.Result:
    """Apply the exemplar pair's edit (input -> edited) to `image` with Eq. 5.  `image` may be a
    list (one exemplar pair for all, or one pair per image).  ``condition`` overrides the projected
    edit condition (e.g. a cached one).  ``found["condition"]`` is the condition used."""
    diffusion.check_generator(generator)
    pipe = editor.pipe
    images = image if isinstance(image, (list, tuple)) else [image]
    if condition is None:
        ex_in = exemplar_input if isinstance(exemplar_input, (list, tuple)) else [exemplar_input]
        ex_ed = exemplar_edited if isinstance(exemplar_edited, (list, tuple)) else [exemplar_edited]
        condition = editor.condition(ex_in, ex_ed)
    if condition.shape[0] == 1 and len(images) > 1:
        condition = condition.expand(len(images), -1, -1)
    if condition.shape[0] != len(images):
        raise ValueError(f"{condition.shape[0]} exemplar pairs for {len(images)} images; give one pair, or one per image")
    image_latents = diffusion.encode_image(pipe, list(images), scaled=False)
    c = diffusion.Conditioning(condition, torch.zeros_like(condition), s_E, image_latents=image_latents,
                               image_guidance=s_I)
    latents = diffusion.starting_noise(pipe, len(images), generator, steps, scheduler)
    z, _ = diffusion.denoise(pipe, latents, c, steps=steps, scheduler=scheduler)
    return diffusion.Result(diffusion.decode(pipe, z), z, found={"condition": condition})


def guided_noise(eps_none: torch.Tensor, eps_image: torch.Tensor, eps_full: torch.Tensor, s_E: float = S_E,
                 s_I: float = S_I) -> torch.Tensor:
    """Eq. 5 on the three noise predictions eps(0, 0), eps(E(I_i), 0), eps(E(I_i), E)."""
    return eps_none + s_I * (eps_image - eps_none) + s_E * (eps_full - eps_image)


def exemplar_for(item, index: int = 0):
    """An exemplar pair for a benchmark item: the same edit (its instruction) on another ToyWorld
    scene; ``(input, edited)`` uint8 arrays.  Items whose instruction is not a ToyWorld one need
    their own exemplar (a benchmark with exemplar pairs, such as TOP-Bench-X)."""
    from .data import same_edit

    try:
        e = same_edit(item.instruction, "test", 70_000 + index)
    except ValueError as err:
        raise ValueError(f"EditCLIP edits by example and item {item.id} has no exemplar pair: {err}") from None
    return e.source_image(), e.edited_image()


def _register():
    from ..registry import register

    @register("editclip", needs=("instruction",), models=("editclip-ip2p", "editclip"))
    def run_editclip(ctx, item, generator, steps, s_E: float = S_E, s_I: float = S_I):
        """EditCLIP (Wang et al. 2025): exemplar-based editing; the exemplar pair is the item's edit
        on another ToyWorld scene, guidance s_E = 7, s_I = 1.5 (Eq. 5)."""
        editor = load_editor(ctx.rt.profile)
        ex_in, ex_ed = exemplar_for(item, zlib.crc32(item.id.encode()) % 1_000_000)
        return exemplar_edit(editor, item.image, ex_in, ex_ed, s_E=s_E, s_I=s_I, steps=steps,
                             generator=generator).image


_register()
