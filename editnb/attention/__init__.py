"""Attention capture and control on diffusers' attention-processor API."""
from .store import AttentionStore, Controller, ObservedAttnProcessor, Site, attach

__all__ = ["AttentionStore", "Controller", "ObservedAttnProcessor", "Site", "attach"]
