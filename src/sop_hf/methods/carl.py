"""CARL (SAC 2022, arXiv 2112.15421; docs/method.md §15; no public code, form inferred from CARP): learnable
prototypes in one block; the two views' assignments must agree, plus ``uniformity_weight`` x KL(p-bar || uniform).
CARL is CARP with a single block, so it reuses CARP's model and loss.
"""

import torch

from .carp import CARPConfig, CARPForPreTraining
from .core import Method
from .recipes import DEMO_DATA, DEMO_HEAD, DEMO_TRAINING, DEMO_VIT, recipe


class CARLConfig(CARPConfig):
    """``CARPConfig`` with one block of all ``num_prototypes`` (4096 here: CARL's K is not published); ``block_size``
    always equals ``num_prototypes``."""

    model_type = "carl"

    num_prototypes: int = 4096
    block_size: int | None = None

    def __post_init__(self, **kwargs):
        self.block_size = self.num_prototypes  # one block
        super().__post_init__(**kwargs)


class CARLForPreTraining(CARPForPreTraining):
    config_class = CARLConfig

    def partition(self, device: torch.device) -> None:
        """One block of all prototypes: ``carp_loss`` with no partition is CARL's loss (``losses.carp.carl_loss``)."""
        return None


RECIPES: dict[str, dict[str, dict]] = {
    # The demo's ViT and data; 32 prototypes (its one block), BatchNorm in the head's hidden layers and a uniform-prior
    # weight of 2. 1024 prototypes in one block collapse the head output as CARP's large blocks do (47.9 -> 46.4 %);
    # 32 prototypes with the BatchNorm head use them unevenly (seed 1 +9.5); weight 2 keeps the batch-mean entropy at
    # 0.98-0.99 ln K: +15.4 / +12.8 points (seeds 0 / 1; docs/lineage.md).
    "demo": recipe(
        dict(
            backbone_config=dict(model_type="sop", **DEMO_VIT),
            image_size=DEMO_VIT["image_size"],
            **DEMO_HEAD,
            num_prototypes=32,
            head_batch_norm=True,
            uniformity_weight=2.0,
        ),
        DEMO_DATA,
        DEMO_TRAINING,
    ),  # fmt: skip
}

CARL = Method(
    name="carl",
    title="CARL",
    summary=(
        "CARL learns a set of general prototypes by gradient descent and asks different views of an image to be "
        "assigned consistently to them, with an entropy term that keeps the assignments spread out."
    ),
    citation="""@inproceedings{silva2022carl,
  title         = {Representation Learning via Consistent Assignment of Views to Clusters},
  author        = {Silva, Thalles and Ram{\\'\\i}rez Rivera, Ad{\\'\\i}n},
  booktitle     = {Proceedings of the 37th ACM/SIGAPP Symposium on Applied Computing (SAC)},
  year          = {2022},
  eprint        = {2112.15421},
  archivePrefix = {arXiv}
}""",
    config_class=CARLConfig,
    model_class=CARLForPreTraining,
    recipes=RECIPES,
    loss_labels={"uniformity_loss": "uniform prior (unweighted)", "koleo_loss": "KoLeo"},
    logged_terms=("uniformity_loss", "koleo_loss", "teacher_entropy"),
    uniform_reference=lambda config: (config.num_prototypes, "K"),
    entropy_prototypes=lambda config: config.num_prototypes,
    card_rows=(("Prototypes K", "num_prototypes"), ("Uniform-prior weight", "uniformity_weight")),
)

__all__ = ["CARL", "CARLConfig", "CARLForPreTraining"]
