"""Built-in losses: cross-entropy, label smoothing, Taylor CE, bi-tempered, focal, DSB focal.

Every loss is a ``torch.nn.Module`` built from keyword parameters (all with defaults, plus
``reduction`` in {"mean", "sum", "none"}) whose ``forward(logits, target)`` takes integer targets
[N] or soft targets [N, C] and computes in float32 whatever the autocast dtype.
"""

from __future__ import annotations

from ensemble_engine.hookspecs import Register, hookimpl

from .basic import CrossEntropyLoss, LabelSmoothingCrossEntropy
from .bi_tempered import BiTemperedLogisticLoss, tempered_softmax
from .focal import FocalLoss
from .semantic_scale import SemanticScaleFocalLoss, semantic_scales, weights_from_scales
from .taylor import TaylorCrossEntropy

__all__ = [
    "BiTemperedLogisticLoss",
    "CrossEntropyLoss",
    "FocalLoss",
    "LabelSmoothingCrossEntropy",
    "SemanticScaleFocalLoss",
    "TaylorCrossEntropy",
    "register_losses",
    "semantic_scales",
    "tempered_softmax",
    "weights_from_scales",
]


@hookimpl
def register_losses(register: Register) -> None:
    register(
        "ce",
        CrossEntropyLoss,
        description="cross-entropy; soft targets give -sum y log p",
        aliases=("cross_entropy",),
    )
    register(
        "label_smoothing",
        LabelSmoothingCrossEntropy,
        description="cross-entropy with 1-eps on the target and eps/(K-1) on every other class",
        aliases=("ls",),
    )
    register(
        "taylor_ce",
        TaylorCrossEntropy,
        description="Taylor cross-entropy sum_{i<=order} (1-p_y)^i/i, robust to label noise",
        aliases=("taylor",),
    )
    register(
        "bi_tempered",
        BiTemperedLogisticLoss,
        description="bi-tempered logistic loss (t1 bounds the loss, t2 > 1 a heavy-tailed softmax)",
        aliases=("bitempered", "bi_tempered_logistic"),
    )
    register(
        "focal",
        FocalLoss,
        description="softmax focal loss -alpha_y (1-p_y)^gamma log p_y",
    )
    register(
        "dsb_focal",
        SemanticScaleFocalLoss,
        description="focal loss weighted per class by inverse semantic scale (needs features)",
        aliases=("semantic_scale_focal",),
        needs_features=True,
    )
