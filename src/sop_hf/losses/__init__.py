"""Losses as tensor functions and loss modules, one file per loss (as lightly's ``loss/``).

- ``sop``: SOP [CLS] and SOP-MIM patch losses (support prototypes, the vote identity, anchor draws);
- ``massl``: MaSSL's block-wise memory cross-entropy;
- ``carp``: CARP's consistency and uniformity terms, and CARL (one block);
- ``koleo``: the KoLeo regulariser;
- ``views``: DINO view pairing and the float32 cross-entropy every method shares;
- ``partition``: random partitions into blocks (MaSSL, CARP).

All maths runs in float32 with autocast disabled; gradients reach only the student's inputs.
"""

from .carp import (
    CARPLossOutput,
    carl_loss,
    carp_consistency_loss,
    carp_loss,
    carp_uniformity_loss,
)
from .koleo import koleo_loss
from .massl import massl_loss
from .partition import random_partition
from .sop import (
    SOPClassLoss,
    SOPLossOutput,
    SOPPatchLoss,
    SupportPrototypes,
    build_support_prototypes,
    draw_anchor_indices,
    masked_patch_cross_entropy,
    prototype_assignments,
)
from .views import (
    LOG_CLAMP,
    mean_assignment_entropy,
    multi_view_cross_entropy,
    uniform_loss_value,
    view_pairs,
)

__all__ = [
    "LOG_CLAMP",
    "CARPLossOutput",
    "SOPClassLoss",
    "SOPLossOutput",
    "SOPPatchLoss",
    "SupportPrototypes",
    "build_support_prototypes",
    "carl_loss",
    "carp_consistency_loss",
    "carp_loss",
    "carp_uniformity_loss",
    "draw_anchor_indices",
    "koleo_loss",
    "massl_loss",
    "masked_patch_cross_entropy",
    "mean_assignment_entropy",
    "multi_view_cross_entropy",
    "prototype_assignments",
    "random_partition",
    "uniform_loss_value",
    "view_pairs",
]
