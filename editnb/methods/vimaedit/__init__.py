"""ViMAEdit: Vision-guided and Mask-enhanced Adaptive Denoising for Prompt-based Image Editing.

- :mod:`.embeddings`: the target image embedding estimate (Eq. 7) fed through IP-Adapter (Eq. 8);
- :mod:`.grounding`: self-attention-guided iterative grounding (Eq. 9-10) and the CA-only and
  DPL-style derivatives;
- :mod:`.edit`: the edit itself on the dual-branch editor, with the spatially adaptive variance
  (Eq. 11-12), and :func:`trace_grounding` for the chapter's step-by-step grounding figures;
- :mod:`.runs`: registers "vimaedit", its Table 2 derivatives ("vimaedit-no-image", "vimaedit-ca",
  "vimaedit-dpl", "vimaedit-var0", "vimaedit-var1") and "p2p-pie" with the benchmark runner.
"""
from .edit import GroundingComparison, GroundingTrace, compare_groundings, trace_grounding, vimaedit
from .embeddings import estimate_target_embedding
from .grounding import Grounding, grounding_resolutions, refine
from . import runs  # noqa: F401  (registration happens at import)

__all__ = ["Grounding", "GroundingComparison", "GroundingTrace", "compare_groundings", "estimate_target_embedding", "grounding_resolutions", "refine",
           "trace_grounding", "vimaedit"]
