"""LIME on the shipped toy-ip2p: localisation finds the edit, regularisation keeps the rest."""
import numpy as np
import torch
import torch.nn.functional as F

from editnb import diffusion, metrics, models
from editnb.methods import lime
from editnb.toy import oracle, world

STEPS = 10


def test_roi_overlaps_the_true_edit_mask_on_recolour_edits():
    pipe = models.load("ip2p", profile="toy", device="cpu", dtype=torch.float32)
    ious = []
    for i in range(50):
        e = world.edit_for("test", i, "recolor")
        loc = lime.localise(pipe, e.source_image(), e.instruction, steps=STEPS, generator=torch.Generator().manual_seed(i))
        roi = F.interpolate(torch.tensor(loc.roi, dtype=torch.float32)[None, None], size=(64, 64))[0, 0].numpy() > 0.5
        ious.append(metrics.mask_iou(roi, e.mask()))
    print(f"LIME RoI vs true mask, 50 recolour edits: mean IoU {np.mean(ious):.3f}")
    assert np.mean(ious) > 0.3


def test_lime_changes_less_outside_the_mask_than_ip2p():
    pipe = models.load("ip2p", profile="toy", device="cpu", dtype=torch.float32)
    plain, regular = [], []
    for i in range(12):
        e = world.edit_for("test", 100 + i, "recolor")
        a = diffusion.instruct_pix2pix(pipe, e.source_image(), e.instruction, text_guidance=2.0, steps=STEPS,
                                       generator=torch.Generator().manual_seed(i)).image
        b, _ = lime.edit(pipe, e.source_image(), e.instruction, steps=STEPS, generator=torch.Generator().manual_seed(i),
                         seed=i)
        plain.append(min(oracle.preservation(a, e), 60))
        regular.append(min(oracle.preservation(b, e), 60))
    print(f"outside-mask PSNR: IP2P {np.mean(plain):.2f} dB, LIME {np.mean(regular):.2f} dB")
    assert np.mean(regular) > np.mean(plain) + 0.5
