"""DSB focal loss: focal loss re-weighted by inverse dynamic semantic scale (seed eq. 7-8; Ma et
al., "Delving into Semantic Scale Imbalance", ICLR 2023).

The seed defines ``DSB(Z, y) = -(1/S_y) sum_{i=1..C} (1 - p_ti)^gamma log p_ti`` with
``p_ti = sigmoid(z_ti)`` (eq. 7-8): Cui et al.'s class-balanced sigmoid focal loss with the
weight ``1/S_y`` of the sample's class, ``S_y`` the *semantic scale* (how much feature space the
class covers), measured during training. The seed does not publish how S is computed, so the
choices below are ours and are stated here:

- **Form.** ``form="sigmoid"`` (default) is eq. 8: one-vs-all sigmoid focal terms over all C
  classes, the sum weighted by the sample's class weight (``focal.sigmoid_focal_per_sample``;
  soft targets: the expectation over their classes). ``form="softmax"`` is the earlier ee form,
  softmax focal loss ``-sum_k y_k w_k (1 - p_k)^gamma log p_k``: the class weight multiplies
  only the target class's term and the probabilities compete. No ``alpha``: eq. 7-8 have none.
- **Semantic scale.** For the pooled features ``Z_c`` (m x p) of class c,
  ``S_c = 1/2 log2 det(I + (d/m) (Z_c - mean)^T (Z_c - mean))`` with ``d = p`` (feature dim) and
  ``m`` the number of pooled samples of that class (fewer than ``pool_size`` until it fills).
  By Sylvester's identity the m x m Gram matrix is used when ``m < p``; float64 ``slogdet``.
- **Feature pool.** Per class, a ring buffer of the ``pool_size`` (default 64) latest
  penultimate features, detached and **L2-normalised** per row, so the scale measures the spread
  of directions and not the feature norm, which grows during training.
- **Update cadence.** The trainer calls ``update_features(features [N, p], labels)`` every step
  with the pre-logit features of that step's forward (after the loss of the step is taken), and
  ``refresh_weights()`` at the end of every epoch. Labels are class indices, or soft targets
  whose argmax is taken (a mixup/cutmix image is pooled under the class that fills most of it).
  Scales of classes that got new features are recomputed every ``update_every`` calls (default
  10: features drift slowly, which is the paper's argument for stored features).
- **Weights.** ``w_c = 1/S_c`` (eq. 8), by default (``normalize=True``) divided by their mean,
  so the weights average 1: S is in units of our choosing (bits), and the common factor would
  otherwise rescale the learning rate whenever the scales move. ``normalize=False`` keeps the
  raw ``1/S_c`` (per bit). Classes with fewer than 2 pooled samples, or a scale below 1e-6 bits,
  are unmeasured and get the mean of the measured weights; before any update every weight is 1.
- **State.** ``class_weights``, ``scales``, the pools and their counters and the update count
  are all in ``state_dict()`` (``RESUME_ONLY`` names the large parts), so a run resumed from its
  checkpoint ends where an uninterrupted one ends. The pools hold ``C x pool_size x p`` floats
  (1000 classes x 64 x 2048 dims: 0.5 GB; the seed's 137-class specialists: 72 MB).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ensemble_engine import RecipeError

from .common import ClassificationLoss, check_int, check_number
from .focal import focal_per_sample, sigmoid_focal_per_sample

_MIN_SCALE_BITS = 1e-6
_CLASSES_PER_CHUNK = 64
FORMS = ("sigmoid", "softmax")


def semantic_scales(pools: Tensor, counts: Tensor) -> Tensor:
    """``S_c`` in bits for feature pools [C, m, p] holding ``counts[c]`` valid leading rows.

    Returns float64 [C], NaN where a class has fewer than 2 samples. Rows past ``counts[c]`` are
    ignored: they are zeroed after centring, and zero rows leave the determinant unchanged.
    """
    pools = pools.to(torch.float64)
    num_classes, pool_size, dim = pools.shape
    counts = counts.to(device=pools.device)
    valid = torch.arange(pool_size, device=pools.device)[None, :] < counts[:, None]
    n = counts.clamp_min(1).to(torch.float64)
    mask = valid.unsqueeze(-1).to(torch.float64)
    mean = (pools * mask).sum(dim=1, keepdim=True) / n[:, None, None]
    centred = (pools - mean) * mask
    if pool_size < dim:
        gram = centred @ centred.transpose(1, 2)
        size = pool_size
    else:
        gram = centred.transpose(1, 2) @ centred
        size = dim
    eye = torch.eye(size, dtype=torch.float64, device=pools.device)
    _, logdet = torch.linalg.slogdet(eye + (dim / n)[:, None, None] * gram)
    scales = 0.5 * logdet / math.log(2.0)
    return torch.where(counts >= 2, scales, torch.full_like(scales, math.nan))


def weights_from_scales(scales: Tensor, normalize: bool = True) -> Tensor:
    """Class weights ``1 / S_c`` (divided by their mean with ``normalize``); unmeasured classes
    get the mean of the measured ones, and all are 1 while none is measured."""
    measured = torch.isfinite(scales) & (scales > _MIN_SCALE_BITS)
    if not bool(measured.any()):
        return torch.ones_like(scales)
    raw = torch.where(measured, 1.0 / scales.where(measured, torch.ones_like(scales)), 0.0)
    raw = torch.where(measured, raw, raw[measured].mean())
    return raw / raw.mean() if normalize else raw


class SemanticScaleFocalLoss(ClassificationLoss):
    """DSB focal loss, weighted per class by inverse semantic scale; see the module docstring.

    ``num_classes`` sizes the pools and weights; without it they are sized at the first forward
    from ``logits.shape[1]``. The trainer feeds features through ``update_features``; the
    current per-class scales (bits, NaN when unmeasured) are in ``scales``, the weights in
    ``class_weights``.
    """

    # The state a resumed run needs but a prediction does not (best.pth leaves it out).
    RESUME_ONLY = ("feature_pool", "pool_count", "pool_next", "stale", "_extra_state")

    def __init__(
        self,
        gamma: float = 2.0,
        pool_size: int = 64,
        update_every: int = 10,
        num_classes: int | None = None,
        form: str = "sigmoid",
        normalize: bool = True,
        reduction: str = "mean",
    ) -> None:
        super().__init__(reduction)
        self.gamma = check_number("gamma", gamma, low=0.0)
        self.pool_size = check_int("pool_size", pool_size, low=2)
        self.update_every = check_int("update_every", update_every, low=1)
        if form not in FORMS:
            raise RecipeError(f"loss parameter form={form!r} must be one of {', '.join(FORMS)}")
        if not isinstance(normalize, bool):
            raise RecipeError(f"loss parameter normalize={normalize!r} must be true or false")
        self.form, self.normalize = form, normalize
        self.num_classes: int | None = None
        self.register_buffer("class_weights", torch.ones(0))
        self.register_buffer("scales", torch.zeros(0, dtype=torch.float64))
        self.register_buffer("feature_pool", None)
        self.register_buffer("pool_count", None)
        self.register_buffer("pool_next", None)
        self.register_buffer("stale", None)
        self._calls = 0
        if num_classes is not None:
            self._size_for(check_int("num_classes", num_classes, low=1))

    def _size_for(self, num_classes: int) -> None:
        if self.num_classes == num_classes:
            return
        if self.num_classes is not None:
            raise RecipeError(
                f"dsb_focal was sized for {self.num_classes} classes but got {num_classes}; "
                f"set num_classes to the model's number of classes"
            )
        self.num_classes = num_classes
        device = self.class_weights.device
        self.class_weights = torch.ones(num_classes, device=device)
        self.scales = torch.full((num_classes,), math.nan, dtype=torch.float64, device=device)

    def per_sample(self, logits: Tensor, target: Tensor) -> Tensor:
        self._size_for(logits.shape[1])
        per_sample = sigmoid_focal_per_sample if self.form == "sigmoid" else focal_per_sample
        return per_sample(logits, target, self.gamma, self.class_weights)

    @torch.no_grad()
    def update_features(self, features: Tensor, labels: Tensor) -> None:
        """Push penultimate ``features`` [N, p] of a batch into the pools of their classes."""
        if labels.ndim == 2:
            self._size_for(labels.shape[1])
            labels = labels.argmax(dim=1)
        if self.num_classes is None:
            raise RecipeError("dsb_focal needs num_classes (or one forward) before update_features")
        if features.ndim != 2 or features.shape[0] != labels.shape[0]:
            raise RecipeError(
                f"update_features expects features [N, p] for {labels.shape[0]} labels, "
                f"got shape {tuple(features.shape)}"
            )
        if labels.numel() and not 0 <= int(labels.min()) <= int(labels.max()) < self.num_classes:
            raise RecipeError(
                f"update_features got labels outside [0, {self.num_classes}); pass class indices"
            )
        features = F.normalize(features.detach().float(), dim=1)
        labels = labels.to(device=features.device, dtype=torch.long)
        self._ensure_pool(features.shape[1], features.device)
        self._push(features, labels)
        self._calls += 1
        if self._calls % self.update_every == 0:
            self.refresh_weights()

    def _ensure_pool(self, dim: int, device: torch.device) -> None:
        if self.feature_pool is not None:
            if self.feature_pool.shape[2] != dim:
                raise RecipeError(
                    f"update_features got {dim}-dim features but the pools hold "
                    f"{self.feature_pool.shape[2]}-dim ones; pass the same layer's features"
                )
            return
        size = (self.num_classes, self.pool_size, dim)
        self.feature_pool = torch.zeros(size, device=device)
        self.pool_count = torch.zeros(self.num_classes, dtype=torch.long, device=device)
        self.pool_next = torch.zeros(self.num_classes, dtype=torch.long, device=device)
        self.stale = torch.zeros(self.num_classes, dtype=torch.bool, device=device)

    def _push(self, features: Tensor, labels: Tensor) -> None:
        # Sample number s of a class goes to slot s mod m; of a batch only each class's last m
        # samples are written, so no slot is written twice in one call.
        order = torch.argsort(labels, stable=True)
        labels, features = labels[order], features[order]
        in_batch = torch.bincount(labels, minlength=self.num_classes)
        starts = torch.cumsum(in_batch, 0) - in_batch
        rank = torch.arange(labels.shape[0], device=labels.device) - starts[labels]
        keep = rank >= in_batch[labels] - self.pool_size
        slots = (self.pool_next[labels] + rank) % self.pool_size
        self.feature_pool[labels[keep], slots[keep]] = features[keep]
        self.pool_next = (self.pool_next + in_batch) % self.pool_size
        self.pool_count = (self.pool_count + in_batch).clamp_max(self.pool_size)
        self.stale |= in_batch > 0

    @torch.no_grad()
    def refresh_weights(self) -> None:
        """Recompute the scales of classes with new features, then ``class_weights``."""
        if self.feature_pool is None or not bool(self.stale.any()):
            return
        # In chunks of classes: the float64 copy of every pool at once could take gigabytes.
        for chunk in self.stale.nonzero().squeeze(1).split(_CLASSES_PER_CHUNK):
            fresh = semantic_scales(self.feature_pool[chunk], self.pool_count[chunk])
            self.scales[chunk.to(self.scales.device)] = fresh.to(self.scales.device)
        self.stale.zero_()
        weights = weights_from_scales(self.scales, self.normalize)
        self.class_weights.copy_(weights.to(self.class_weights.dtype))

    def get_extra_state(self) -> dict[str, int]:
        return {"calls": self._calls}

    def set_extra_state(self, state: dict[str, int]) -> None:
        self._calls = int(state["calls"])

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        saved = state_dict.get(prefix + "class_weights")
        if saved is not None and self.num_classes is None:
            self._size_for(saved.shape[0])
        pool = state_dict.get(prefix + "feature_pool")
        if pool is not None and self.num_classes is not None:
            self._ensure_pool(pool.shape[2], self.class_weights.device)
        super()._load_from_state_dict(state_dict, prefix, *args)

    def extra_repr(self) -> str:
        return (
            f"form={self.form!r}, gamma={self.gamma}, pool_size={self.pool_size}, "
            f"update_every={self.update_every}, num_classes={self.num_classes}, "
            f"normalize={self.normalize}, {super().extra_repr()}"
        )
