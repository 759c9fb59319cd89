"""Attention capture and control on diffusers' attention-processor API."""
from .controller import BIAS, IMAGE_PROBS, OUTPUT, PROBS, Chain, Controller, Site, layout_of
from .processor import ObservedAttnProcessor, attach
from .store import AttentionStore

__all__ = ["AttentionStore", "BIAS", "Chain", "Controller", "IMAGE_PROBS", "OUTPUT", "ObservedAttnProcessor", "PROBS", "Site",
           "attach", "layout_of"]
