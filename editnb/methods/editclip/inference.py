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
from .model import EditEncoder, load_encoder, new_projection, reinitialise_projection

S_E, S_I = 7.0, 1.5  # supplement Sec. G.3 (InstructPix2Pix's suggested practice)
PROJECTION_FILE = "projection.safetensors"


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
    from safetensors.torch import load_file

    state = load_file(str(Path(folder) / PROJECTION_FILE))
    cross, hidden = state["0.weight"].shape
    proj = new_projection(hidden, cross)
    proj.load_state_dict(state)
    return proj.to(device=device, dtype=dtype or torch.float32).eval()


def load_editor(profile: str | None = None, device=None, dtype=None, untrained_ok: bool = False,
                seed: int = 0) -> ExemplarEditor:
    """The registry's exemplar editor ('editclip-ip2p' + its projection) and pair encoder.

    The paper released the pair encoder (QWW/EditCLIP) but no exemplar editor, so on sd15 (and
    sd15-shaped) there are no weights for it: without `untrained_ok` that is a RuntimeError; with
    it, the editor is the 'ip2p' pipeline (InstructPix2Pix) and a fresh projection drawn with
    `seed` from the pair encoder's hidden width to the UNet's cross-attention width, and a
    warning says that it is untrained: its outputs are the code path of Eq. 5, not edits.
    Train one with :func:`exemplar_objective` (the ``editclip-ip2p`` task)."""
    import warnings

    from ...models import REGISTRY, load, toy_path
    from ...runtime import current

    profile = profile or current().profile
    trained = profile == "toy" or bool(REGISTRY["editclip-ip2p"].sd15)  # only the toy profile ships weights today
    if not trained and not untrained_ok:
        raise RuntimeError(f"'editclip-ip2p' has no public sd15 weights (EditCLIP released only its pair encoder), so "
                           f"the {profile} profile has no trained exemplar editor: use the toy profile "
                           "(editnb.setup(profile='toy')), train one with editnb.methods.editclip (the editclip-ip2p "
                           "task), or pass untrained_ok=True for InstructPix2Pix with an untrained projection (the "
                           "code path of Eq. 5, not edits)")
    if trained:
        pipe = load("editclip-ip2p", profile=profile, device=device, dtype=dtype)
        proj = load_projection(toy_path("editclip-ip2p"), device=diffusion.execution_device(pipe), dtype=pipe.unet.dtype)
        return ExemplarEditor(pipe, proj, load_encoder(profile, device=device, dtype=dtype))
    warnings.warn(f"EditCLIP released no exemplar-editor weights, so on the {profile} profile the exemplar editor is "
                  "InstructPix2Pix ('ip2p') with an UNTRAINED projection of the pair encoder's hidden states (seed "
                  f"{seed}): its outputs run Eq. 5 but are not edits. Train the UNet and projection with "
                  "editnb.methods.editclip.exemplar_objective (the editclip-ip2p task), or use the toy profile, "
                  "which ships a trained one.", stacklevel=2)
    pipe = load("ip2p", profile=profile, device=device, dtype=dtype)
    encoder = load_encoder(profile, device=device, dtype=dtype)
    proj = reinitialise_projection(new_projection(encoder.model.config.vision_config.hidden_size,
                                                  pipe.unet.config.cross_attention_dim), seed)
    proj = proj.to(device=diffusion.execution_device(pipe), dtype=pipe.unet.dtype).eval()
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
