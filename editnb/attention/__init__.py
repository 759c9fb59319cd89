"""Attention capture and control on diffusers' attention-processor API."""
from .store import AttentionStore, Chain, Controller, ObservedAttnProcessor, Site, attach

__all__ = ["AttentionStore", "Chain", "Controller", "ObservedAttnProcessor", "Site", "attach"]
