"""Built-in losses: cross-entropy, label smoothing, Taylor CE, bi-tempered, focal, DSB focal.

Every loss is a ``torch.nn.Module`` built from keyword parameters (all with defaults, plus
``reduction`` in {"mean", "sum", "none"}) whose ``forward(logits, target)`` takes integer targets
[N] or soft targets [N, C] and computes in float32 whatever the autocast dtype.
"""

from __future__ import annotations

from ensemble_engine import Register, hookimpl, lazy_exports

# Loss classes are imported on first use (module-level __getattr__), so loading the plugin to
# list commands or read a store does not import torch.
_EXPORTS = {
    "CrossEntropyLoss": "basic",
    "LabelSmoothingCrossEntropy": "basic",
    "BiTemperedLogisticLoss": "bi_tempered",
    "tempered_softmax": "bi_tempered",
    "FocalLoss": "focal",
    "SemanticScaleFocalLoss": "semantic_scale",
    "semantic_scales": "semantic_scale",
    "weights_from_scales": "semantic_scale",
    "TaylorCrossEntropy": "taylor",
}
__all__ = [*sorted(_EXPORTS), "register_losses"]


__getattr__ = lazy_exports(__name__, _EXPORTS)


def _target(cls: str) -> str:
    return f"{__name__}.{_EXPORTS[cls]}:{cls}"


@hookimpl
def register_losses(register: Register) -> None:
    register(
        "ce",
        _target("CrossEntropyLoss"),
        description="cross-entropy; soft targets give -sum y log p",
        aliases=("cross_entropy",),
    )
    register(
        "label_smoothing",
        _target("LabelSmoothingCrossEntropy"),
        description="cross-entropy with 1-eps on the target and eps/(K-1) on every other class",
        aliases=("ls",),
    )
    register(
        "taylor_ce",
        _target("TaylorCrossEntropy"),
        description="Taylor cross-entropy sum_{i<=order} (1-p_y)^i/i, robust to label noise",
        aliases=("taylor",),
    )
    register(
        "bi_tempered",
        _target("BiTemperedLogisticLoss"),
        description="bi-tempered logistic loss (t1 bounds the loss, t2 > 1 a heavy-tailed softmax)",
        aliases=("bitempered", "bi_tempered_logistic"),
    )
    register(
        "focal",
        _target("FocalLoss"),
        description="softmax focal loss -alpha_y (1-p_y)^gamma log p_y",
    )
    register(
        "dsb_focal",
        _target("SemanticScaleFocalLoss"),
        description="the seed's DSB focal loss: sigmoid focal weighted by 1/semantic scale of "
        "the sample's class, measured on pooled features (needs features; form=softmax too)",
        aliases=("semantic_scale_focal",),
        needs_features=True,
    )
