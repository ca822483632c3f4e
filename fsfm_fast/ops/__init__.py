"""fsfm_fast ops: CRFR-P masking, visible-patch embedding, token restore, the 3C loss, EMA.

Each public op validates its inputs, then runs the backend chosen by its `backend` argument
(or FSFM_OPS_BACKEND); `reference` holds the plain-PyTorch semantics of all of them. `selfcheck`
runs the compiled and Triton implementations once against the reference before a run trusts them.
"""
from . import reference
from .crfrp_mask import crfrp_mask, group_touch
from .ema import ema_update
from .fsfm_loss import FSFMLoss, fsfm_loss, patchify, unpatchify
from .gather_visible import gather_visible, mask_to_indices
from .reference import GROUP_NAMES, NUM_LABELS
from .region_presence import region_presence
from .restore_masked import restore_masked
from .selfcheck import SelfCheckError, backends_in_use, selfcheck

__all__ = [
    "FSFMLoss", "GROUP_NAMES", "NUM_LABELS", "SelfCheckError", "backends_in_use", "crfrp_mask",
    "ema_update", "fsfm_loss", "gather_visible", "group_touch", "mask_to_indices", "patchify",
    "reference", "region_presence", "restore_masked", "selfcheck", "unpatchify",
]
