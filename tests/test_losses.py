"""The built-in losses (plugin ee_losses) against independent float64 reimplementations.

The references below are deliberately plain: numpy / Python loops over rows and classes, written
from the formulas in the papers, sharing no code with the plugin.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ee_losses import (
    BiTemperedLogisticLoss,
    CrossEntropyLoss,
    FocalLoss,
    LabelSmoothingCrossEntropy,
    SemanticScaleFocalLoss,
    TaylorCrossEntropy,
    semantic_scales,
    tempered_softmax,
    weights_from_scales,
)
from scipy.optimize import brentq
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy as TimmLabelSmoothing

from ensemble_engine.errors import PluginError, RecipeError
from ensemble_engine.losses import create_loss, list_losses
from ensemble_engine.plugins import get_host

BUILTINS = {
    "ce": (CrossEntropyLoss, ("cross_entropy",)),
    "label_smoothing": (LabelSmoothingCrossEntropy, ("ls",)),
    "taylor_ce": (TaylorCrossEntropy, ("taylor",)),
    "bi_tempered": (BiTemperedLogisticLoss, ("bitempered", "bi_tempered_logistic")),
    "focal": (FocalLoss, ()),
    "dsb_focal": (SemanticScaleFocalLoss, ("semantic_scale_focal",)),
}
REGISTERED = list_losses()
REDUCTIONS = ("mean", "sum", "none")
N, K = 6, 5


# --- inputs -----------------------------------------------------------------------------------


def batch(kind: str, seed: int = 0, scale: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random logits [N, K] and targets: class indices ("int") or rows of probabilities ("soft")."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(N, K, generator=gen) * scale
    labels = torch.randint(0, K, (N,), generator=gen)
    if kind == "int":
        return logits, labels
    mixed = 0.7 * F.one_hot(labels, K) + 0.3 * torch.softmax(torch.randn(N, K, generator=gen), 1)
    return logits, mixed.float()


def as_numpy(logits: torch.Tensor, target: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    x = logits.double().numpy()
    if target.ndim == 1:
        y = np.zeros_like(x)
        y[np.arange(len(target)), target.numpy()] = 1.0
    else:
        y = target.double().numpy()
    return x, y


def reduced(rows: list[float], reduction: str) -> np.ndarray:
    values = np.array(rows)
    return {"mean": values.mean(), "sum": values.sum(), "none": values}[reduction]


def check(loss: torch.nn.Module, logits, target, rows: list[float], reduction: str, tol=1e-5):
    got = loss(logits, target).detach().double().numpy()
    np.testing.assert_allclose(got, reduced(rows, reduction), rtol=tol, atol=tol)


# --- plain references -------------------------------------------------------------------------


def ref_softmax(row: np.ndarray) -> np.ndarray:
    e = np.exp(row - row.max())
    return e / e.sum()


def ref_ce(x, y) -> list[float]:
    return [-sum(y[n, k] * math.log(ref_softmax(x[n])[k]) for k in range(K)) for n in range(N)]


def ref_label_smoothing(x, y, eps) -> list[float]:
    smoothed = np.array([[(1 - eps) * v + eps / (K - 1) * (1 - v) for v in row] for row in y])
    return ref_ce(x, smoothed)


def ref_taylor(x, y, order) -> list[float]:
    rows = []
    for n in range(N):
        p = ref_softmax(x[n])
        rows.append(
            sum(y[n, k] * sum((1 - p[k]) ** i / i for i in range(1, order + 1)) for k in range(K))
        )
    return rows


def ref_focal(x, y, gamma, alpha=None) -> list[float]:
    alpha = [1.0] * K if alpha is None else alpha
    rows = []
    for n in range(N):
        p = ref_softmax(x[n])
        rows.append(
            -sum(y[n, k] * alpha[k] * (1 - p[k]) ** gamma * math.log(p[k]) for k in range(K))
        )
    return rows


def ref_log_t(u: float, t: float) -> float:
    return math.log(u) if t == 1 else (u ** (1 - t) - 1) / (1 - t)


def ref_exp_t(u: float, t: float) -> float:
    return math.exp(u) if t == 1 else max(0.0, 1 + (1 - t) * u) ** (1 / (1 - t))


def ref_normaliser(row: list[float], t: float, iters: int) -> float:
    """The reference algorithm, one row at a time: fixed point (t > 1) or bisection (t < 1)."""
    mu = max(row)
    a0 = [a - mu for a in row]
    if t == 1:
        return mu + math.log(sum(math.exp(a) for a in a0))
    if t > 1:
        a = a0
        for _ in range(iters):
            z = sum(ref_exp_t(v, t) for v in a)
            a = [v * z ** (1 - t) for v in a0]
        z = sum(ref_exp_t(v, t) for v in a)
        return -ref_log_t(1 / z, t) + mu
    dim = sum(1 for a in a0 if a > -1 / (1 - t))
    lower, upper = 0.0, -ref_log_t(1 / dim, t)
    for _ in range(iters):
        mid = (lower + upper) / 2
        if sum(ref_exp_t(a - mid, t) for a in a0) < 1:
            upper = mid
        else:
            lower = mid
    return (lower + upper) / 2 + mu


def exact_normaliser(row: list[float], t: float) -> float:
    """The root of sum_k exp_t(a_k - lam) = 1, found by Brent's method (no iteration budget)."""

    def excess(lam: float) -> float:
        return sum(ref_exp_t(a - lam, t) for a in row) - 1

    low, width = max(row), 1.0
    while excess(low + width) > 0:
        width *= 2
    return brentq(excess, low, low + width, xtol=1e-14, rtol=1e-14)


def ref_bi_tempered(x, y, t1, t2, eps=0.0, iters=5, exact=False) -> list[float]:
    rows = []
    for n in range(N):
        row = [float(a) for a in x[n]]
        lam = exact_normaliser(row, t2) if exact else ref_normaliser(row, t2, iters)
        p = [ref_exp_t(a - lam, t2) for a in row]
        yy = [v * (1 - eps * K / (K - 1)) + eps / (K - 1) for v in y[n]]
        total = 0.0
        for k in range(K):
            if yy[k] > 0:
                total += yy[k] * (ref_log_t(yy[k] + 1e-10, t1) - ref_log_t(p[k], t1))
            total -= (yy[k] ** (2 - t1) - p[k] ** (2 - t1)) / (2 - t1)
        rows.append(total)
    return rows


# --- the registry -----------------------------------------------------------------------------


def test_every_builtin_is_registered_with_its_aliases():
    registry = get_host().losses
    for name, (cls, aliases) in BUILTINS.items():
        entry = registry.get(name)
        assert entry.factory is cls
        assert entry.plugin == "ee_losses"
        assert set(entry.aliases) == set(aliases)
        assert entry.description


@pytest.mark.parametrize(
    "name, alias",
    [(name, name) for name in BUILTINS]
    + [(name, alias) for name, (_, aliases) in BUILTINS.items() for alias in aliases],
)
def test_create_loss_by_name_and_alias(name, alias):
    loss = create_loss(alias, reduction="sum")
    assert type(loss) is BUILTINS[name][0]
    assert loss.reduction == "sum"


def test_unknown_loss_is_a_plugin_error():
    with pytest.raises(PluginError, match="no_such_loss"):
        create_loss("no_such_loss")


@pytest.mark.parametrize(
    "name, params",
    [
        ("ce", {"reduction": "avg"}),
        ("ce", {"weight": [1.0]}),
        ("label_smoothing", {"smoothing": 1.0}),
        ("taylor_ce", {"order": 0}),
        ("taylor_ce", {"order": 1.5}),
        ("bi_tempered", {"t1": 2.0}),
        ("bi_tempered", {"t2": 0.0}),
        ("bi_tempered", {"t1": 1.0, "t2": 0.8}),
        ("bi_tempered", {"num_iters": 0}),
        ("focal", {"gamma": -1.0}),
        ("focal", {"alpha": [1.0, -2.0]}),
        ("dsb_focal", {"pool_size": 1}),
        ("dsb_focal", {"num_classes": 0}),
    ],
)
def test_invalid_parameters_are_recipe_errors(name, params):
    with pytest.raises(RecipeError):
        create_loss(name, **params)


@pytest.mark.parametrize(
    "target",
    [torch.tensor([0, 1, 2, 3, 4, K]), torch.tensor([0, -1, 2, 3, 4, 0]), torch.ones(N, K + 1)],
)
def test_targets_that_do_not_fit_the_logits_are_recipe_errors(target):
    with pytest.raises(RecipeError):
        create_loss("ce")(torch.zeros(N, K), target)


def test_targets_off_the_cpu_are_not_read_back_to_check_their_range():
    # On a GPU the range check would wait for the device at every training step. "meta"
    # tensors hold no values, so any read of them raises: the check must not run there.
    from ee_losses.common import soft_targets

    logits = torch.empty(N, K, device="meta")
    one_hot = soft_targets(torch.empty(N, dtype=torch.int64, device="meta"), logits)
    assert one_hot.shape == (N, K) and one_hot.device.type == "meta"


def test_focal_alpha_must_have_one_weight_per_class():
    with pytest.raises(RecipeError, match="class weights"):
        create_loss("focal", alpha=[1.0, 2.0])(*batch("int"))


# --- generic checks, for every registered loss ------------------------------------------------


@pytest.mark.parametrize("name", REGISTERED)
@pytest.mark.parametrize("kind", ["int", "soft"])
def test_reductions_and_target_kinds(name, kind):
    logits, target = batch(kind, seed=1)
    per_row = create_loss(name, reduction="none")(logits, target)
    assert per_row.shape == (N,) and per_row.dtype == torch.float32
    assert torch.isfinite(per_row).all()
    mean = create_loss(name, reduction="mean")(logits, target)
    total = create_loss(name, reduction="sum")(logits, target)
    assert mean.shape == () and total.shape == ()
    torch.testing.assert_close(mean, per_row.mean())
    torch.testing.assert_close(total, per_row.sum())


@pytest.mark.parametrize("name", REGISTERED)
def test_integer_targets_equal_their_one_hot_rows(name):
    logits, labels = batch("int", seed=2)
    loss = create_loss(name, reduction="none")
    torch.testing.assert_close(loss(logits, labels), loss(logits, F.one_hot(labels, K).float()))


@pytest.mark.parametrize("name", REGISTERED)
def test_timm_mixup_and_cutmix_targets(name):
    np.random.seed(0)
    mixup = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=K)
    images, soft = mixup(torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3]))
    logits = (images.flatten(1)[:, :K] * 3).requires_grad_()
    value = create_loss(name)(logits, soft)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(logits.grad).all()


def extreme_logits() -> torch.Tensor:
    """Rows at the ±50 edges: confidently right, confidently wrong, alternating, random."""
    rows = torch.full((N, K), -50.0)
    rows[0, 0] = rows[1, 1] = rows[2, K - 1] = 50.0
    rows[3] = torch.tensor([50.0, -50.0] * K)[:K]
    rows[4] = 50.0
    rows[5] = torch.rand(K, generator=torch.Generator().manual_seed(0)) * 100 - 50
    return rows


EXTRA_CONFIGS = [
    ("label_smoothing", {"smoothing": 0.3}),
    ("taylor_ce", {"order": 6}),
    ("bi_tempered", {"t1": 0.5, "t2": 0.8}),
    ("bi_tempered", {"t1": 0.2, "t2": 4.0, "smoothing": 0.1}),
    ("bi_tempered", {"t1": 1.0, "t2": 1.0}),
    ("focal", {"gamma": 0.5, "alpha": [0.5, 1.0, 1.5, 2.0, 0.0]}),
]


@pytest.mark.parametrize(
    "name, params", [(name, {}) for name in REGISTERED] + EXTRA_CONFIGS, ids=str
)
@pytest.mark.parametrize("kind", ["int", "soft"])
def test_finite_loss_and_gradients_at_extreme_logits(name, params, kind):
    _, target = batch(kind)
    targets = target if kind == "soft" else torch.tensor([0, 0, 0, 1, 2, 3])
    logits = extreme_logits().requires_grad_()
    value = create_loss(name, reduction="sum", **params)(logits, targets)
    value.backward()
    assert torch.isfinite(value)
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("name", REGISTERED)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cpu_autocast_computes_in_float32(name, dtype):
    torch.manual_seed(0)
    layer = torch.nn.Linear(8, K)
    inputs = torch.randn(N, 8) * 4
    _, target = batch("soft")
    loss = create_loss(name)
    with torch.autocast("cpu", dtype=dtype):
        low_logits = layer(inputs)
        value = loss(low_logits, target)
    assert low_logits.dtype == dtype
    assert value.dtype == torch.float32 and torch.isfinite(value)
    torch.testing.assert_close(value, loss(low_logits.float(), target))
    torch.testing.assert_close(value, loss(layer(inputs), target), rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize("name", REGISTERED)
def test_float16_logits_give_float32_loss_close_to_float32(name):
    logits, labels = batch("int", seed=3)
    half = logits.half().requires_grad_()
    loss = create_loss(name)
    value = loss(half, labels)
    value.backward()
    assert value.dtype == torch.float32 and torch.isfinite(half.grad.float()).all()
    torch.testing.assert_close(value, loss(logits, labels), rtol=1e-2, atol=1e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", REGISTERED)
def test_cuda_float16_autocast_is_finite_and_close(name):
    torch.manual_seed(0)
    layer = torch.nn.Linear(8, K).cuda()
    inputs = torch.randn(N, 8, device="cuda") * 20
    target = torch.tensor([0, 1, 2, 3, 4, 0], device="cuda")
    loss = create_loss(name).cuda()
    with torch.autocast("cuda", dtype=torch.float16):
        logits = layer(inputs)
        value = loss(logits, target)
    value.backward()
    assert value.dtype == torch.float32 and torch.isfinite(value)
    assert torch.isfinite(layer.weight.grad).all()
    torch.testing.assert_close(value, loss(layer(inputs), target), rtol=3e-2, atol=3e-2)


# --- cross-entropy and label smoothing --------------------------------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("kind", ["int", "soft"])
def test_ce_matches_reference_and_torch(kind, reduction):
    logits, target = batch(kind)
    loss = create_loss("ce", reduction=reduction)
    check(loss, logits, target, ref_ce(*as_numpy(logits, target)), reduction)
    expected = F.cross_entropy(logits, target, reduction=reduction)
    torch.testing.assert_close(loss(logits, target), expected)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("kind", ["int", "soft"])
def test_label_smoothing_matches_reference(kind, reduction):
    logits, target = batch(kind)
    loss = create_loss("label_smoothing", smoothing=0.2, reduction=reduction)
    check(loss, logits, target, ref_label_smoothing(*as_numpy(logits, target), 0.2), reduction)


def test_label_smoothing_hand_computed_three_classes():
    # p = (1/2, 1/4, 1/4), target 0, eps = 0.1, K = 3: smoothed target (0.9, 0.05, 0.05), so
    # loss = 0.9 ln 2 + 0.05 ln 4 + 0.05 ln 4 = (0.9 + 0.2) ln 2 = 1.1 ln 2.
    # timm spreads eps/K over all classes: target (0.9 + 1/30, 1/30, 1/30), so
    # loss = (0.9 + 1/30) ln 2 + (2/30) ln 4 = (0.9 + 0.5/3) ln 2: a different number.
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.25]]))
    target = torch.tensor([0])
    ours = create_loss("label_smoothing", smoothing=0.1)(logits, target)
    timm_value = TimmLabelSmoothing(smoothing=0.1)(logits, target)
    assert ours.item() == pytest.approx(1.1 * math.log(2), rel=1e-6)
    assert timm_value.item() == pytest.approx((0.9 + 0.5 / 3) * math.log(2), rel=1e-6)


# --- Taylor cross-entropy ---------------------------------------------------------------------


@pytest.mark.parametrize("order", [1, 2, 5])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("kind", ["int", "soft"])
def test_taylor_matches_reference(kind, reduction, order):
    logits, target = batch(kind)
    loss = create_loss("taylor_ce", order=order, reduction=reduction)
    check(loss, logits, target, ref_taylor(*as_numpy(logits, target), order), reduction)


def test_taylor_order_one_is_one_minus_p_target():
    logits, labels = batch("int", seed=4)
    p_target = torch.softmax(logits, 1)[torch.arange(N), labels]
    value = create_loss("taylor_ce", order=1, reduction="none")(logits, labels)
    torch.testing.assert_close(value, 1 - p_target)


@pytest.mark.parametrize(
    "label, order, expected",
    [
        (0, 2, 0.5 + 0.5**2 / 2),  # 1 - p = 1/2: 0.625
        (0, 3, 0.5 + 0.5**2 / 2 + 0.5**3 / 3),  # 0.625 + 1/24
        (1, 2, 0.75 + 0.75**2 / 2),  # 1 - p = 3/4: 1.03125
    ],
)
def test_taylor_hand_computed(label, order, expected):
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.25]]))
    value = create_loss("taylor", order=order)(logits, torch.tensor([label]))
    assert value.item() == pytest.approx(expected, rel=1e-6)


def test_taylor_approaches_cross_entropy_as_order_grows():
    logits, labels = batch("int", scale=1.0)
    ce = create_loss("ce")(logits, labels)
    taylor = create_loss("taylor_ce", order=200)(logits, labels)
    torch.testing.assert_close(taylor, ce, rtol=1e-3, atol=1e-3)


# --- bi-tempered ------------------------------------------------------------------------------


@pytest.mark.parametrize("t1, t2", [(0.8, 1.2), (0.5, 0.8), (0.2, 4.0), (1.0, 1.5)])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("kind", ["int", "soft"])
def test_bi_tempered_matches_reference_loop(kind, smoothing, t1, t2):
    logits, target = batch(kind)
    loss = create_loss("bi_tempered", t1=t1, t2=t2, smoothing=smoothing, reduction="none")
    x, y = as_numpy(logits, target)
    check(loss, logits, target, ref_bi_tempered(x, y, t1, t2, smoothing, iters=5), "none")


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("kind", ["int", "soft"])
def test_bi_tempered_default_matches_exact_tempered_softmax(kind, reduction):
    # t1 = 0.8, t2 = 1.2 with the normaliser found by root finding instead of iteration.
    logits, target = batch(kind, seed=5)
    loss = create_loss("bi_tempered", reduction=reduction, num_iters=30)
    x, y = as_numpy(logits, target)
    check(loss, logits, target, ref_bi_tempered(x, y, 0.8, 1.2, exact=True), reduction, 1e-4)


@pytest.mark.parametrize("t2", [1.2, 2.0, 0.8, 0.5])
def test_tempered_softmax_sums_to_one(t2):
    logits, _ = batch("int", seed=6, scale=10.0)
    probs = tempered_softmax(logits.double(), t2, num_iters=40)
    torch.testing.assert_close(probs.sum(1), torch.ones(N, dtype=torch.float64))
    rows = logits.double().tolist()
    exact = [[ref_exp_t(a - exact_normaliser(row, t2), t2) for a in row] for row in rows]
    np.testing.assert_allclose(probs.numpy(), np.array(exact), atol=1e-9)
    if t2 < 1:  # finite support: classes far below the top get exactly zero
        assert (probs == 0).any()


@pytest.mark.parametrize("kind", ["int", "soft"])
def test_bi_tempered_at_t1_t2_one_is_cross_entropy(kind):
    logits, target = batch(kind)
    bi = create_loss("bi_tempered", t1=1.0, t2=1.0, reduction="none")(logits, target)
    ce = create_loss("ce", reduction="none")(logits, target)
    # A divergence: soft targets give KL(y || p) = CE - H(y); one-hot targets have H(y) = 0.
    y = as_numpy(logits, target)[1]
    entropy = [-sum(v * math.log(v) for v in row if v > 0) for row in y]
    np.testing.assert_allclose(bi.numpy(), ce.numpy() - np.array(entropy), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("t1, t2", [(0.8, 1.2), (0.5, 0.7), (0.8, 0.8), (1.0, 1.0), (0.2, 4.0)])
def test_bi_tempered_closed_form_gradient_matches_finite_differences(t1, t2):
    logits, target = batch("soft", seed=7, scale=2.0)
    loss = create_loss("bi_tempered", t1=t1, t2=t2, smoothing=0.05, num_iters=80)
    x = logits.double().requires_grad_()
    assert torch.autograd.gradcheck(lambda a: loss(a, target.double()), (x,), atol=1e-6)


# --- focal ------------------------------------------------------------------------------------


@pytest.mark.parametrize("gamma, alpha", [(2.0, None), (0.5, [0.5, 1.0, 1.5, 2.0, 0.25])])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("kind", ["int", "soft"])
def test_focal_matches_reference(kind, reduction, gamma, alpha):
    logits, target = batch(kind)
    loss = create_loss("focal", gamma=gamma, alpha=alpha, reduction=reduction)
    x, y = as_numpy(logits, target)
    check(loss, logits, target, ref_focal(x, y, gamma, alpha), reduction)


@pytest.mark.parametrize("kind", ["int", "soft"])
def test_focal_with_gamma_zero_is_cross_entropy(kind):
    logits, target = batch(kind)
    focal = create_loss("focal", gamma=0.0, reduction="none")(logits, target)
    torch.testing.assert_close(focal, create_loss("ce", reduction="none")(logits, target))


# --- focal weighted by semantic scale ---------------------------------------------------------


def ref_semantic_scale(z: np.ndarray) -> float:
    """1/2 log2 det(I_p + (p/m) Zc^T Zc) on the p x p matrix, straight from the definition."""
    m, p = z.shape
    zc = z - z.mean(axis=0)
    sign, logdet = np.linalg.slogdet(np.eye(p) + (p / m) * zc.T @ zc)
    assert sign > 0
    return 0.5 * logdet / math.log(2)


def unit_rows(x: torch.Tensor) -> np.ndarray:
    x = x.double().numpy()
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("pool_size, dim", [(8, 6), (4, 10)])  # p x p path and m x m path
def test_semantic_scales_match_numpy_log_det(pool_size, dim):
    pools = np.random.default_rng(0).normal(size=(4, pool_size, dim))
    counts = np.array([pool_size, 3, 1, 2])
    got = semantic_scales(torch.from_numpy(pools), torch.from_numpy(counts)).numpy()
    for c, count in enumerate(counts):
        if count < 2:
            assert math.isnan(got[c])
        else:
            assert got[c] == pytest.approx(ref_semantic_scale(pools[c, :count]), rel=1e-10)


def test_weights_are_inverse_scales_with_mean_one():
    # 1/S = (1, 1/2, 1/4); the unmeasured class gets their mean 7/12; all are divided by the
    # mean over the four classes, which is 7/12 again: (12/7, 6/7, 3/7, 1).
    weights = weights_from_scales(torch.tensor([1.0, 2.0, 4.0, math.nan], dtype=torch.float64))
    np.testing.assert_allclose(weights.numpy(), [12 / 7, 6 / 7, 3 / 7, 1.0], rtol=1e-12)
    unmeasured = torch.tensor([math.nan, 0.0], dtype=torch.float64)
    np.testing.assert_array_equal(weights_from_scales(unmeasured).numpy(), [1.0, 1.0])


def spread_and_tight_features(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Features in all directions (large semantic scale) and around one direction (small scale)."""
    gen = torch.Generator().manual_seed(seed)
    spread = torch.randn(10, 6, generator=gen)
    tight = torch.ones(6) + 0.05 * torch.randn(6, 6, generator=gen)
    return spread, tight


def test_update_features_pools_the_latest_samples_and_reweights():
    loss = create_loss("dsb_focal", num_classes=3, pool_size=4, update_every=1)
    spread, tight = spread_and_tight_features()
    loss.update_features(spread[:7], torch.zeros(7, dtype=torch.long))  # more than one pool
    features = torch.cat([spread[7:], tight, torch.randn(1, 6)])
    labels = torch.tensor([0] * 3 + [1] * 6 + [2])
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(1))
    loss.update_features(features[perm], labels[perm])

    last_tight = [int(i) - 3 for i in perm if labels[i] == 1][-4:]
    assert loss.scales[0].item() == pytest.approx(ref_semantic_scale(unit_rows(spread[6:])))
    assert loss.scales[1].item() == pytest.approx(ref_semantic_scale(unit_rows(tight[last_tight])))
    assert math.isnan(loss.scales[2].item())  # one sample: unmeasured
    weights = loss.class_weights
    assert weights.mean().item() == pytest.approx(1.0)
    assert weights[2].item() == pytest.approx(1.0)
    assert weights[1] > 1.0 > weights[0]  # the smaller scale weighs more


def test_update_features_takes_the_argmax_of_soft_labels():
    spread, tight = spread_and_tight_features()
    features = torch.cat([spread[:6], tight])
    labels = torch.tensor([0] * 6 + [1] * 6)
    soft = 0.6 * F.one_hot(labels, 2) + 0.2
    hard_loss, soft_loss = (create_loss("dsb_focal", update_every=1) for _ in range(2))
    hard_loss(torch.zeros(1, 2), torch.tensor([0]))  # sizes the pools from the logits
    hard_loss.update_features(features, labels)
    soft_loss.update_features(features, soft)
    torch.testing.assert_close(soft_loss.class_weights, hard_loss.class_weights)
    assert not torch.equal(soft_loss.class_weights, torch.ones(2))


def test_weights_refresh_every_update_every_calls():
    spread, tight = spread_and_tight_features()
    loss = create_loss("dsb_focal", num_classes=2, pool_size=8, update_every=3)
    for call in range(3):
        assert torch.equal(loss.class_weights, torch.ones(2))
        batch_features = torch.cat(
            [spread[3 * call : 3 * call + 3], tight[2 * call : 2 * call + 2]]
        )
        loss.update_features(batch_features, torch.tensor([0, 0, 0, 1, 1]))
    assert loss.class_weights[1] > loss.class_weights[0]

    lazy = create_loss("dsb_focal", num_classes=2, update_every=100)
    lazy.update_features(torch.cat([spread, tight]), torch.tensor([0] * 10 + [1] * 6))
    assert torch.equal(lazy.class_weights, torch.ones(2))
    lazy.refresh_weights()
    assert lazy.class_weights[1] > lazy.class_weights[0]


def ref_sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def ref_dsb_sigmoid(x, y, gamma, weights) -> list[float]:
    """Seed eq. 8 for a sample of class c: -w_c sum_i (1 - p_ti)^gamma log p_ti with
    p_ti = sigmoid(z_i) for i = c, 1 - sigmoid(z_i) otherwise; a soft row averages over its
    classes (sum_c y_c * that), looped class by class."""
    rows = []
    for n in range(N):
        total = 0.0
        for c in range(K):
            if y[n, c] == 0:
                continue
            inner = 0.0
            for i in range(K):
                s = ref_sigmoid(x[n, i])
                p_t = s if i == c else 1.0 - s
                inner += -((1.0 - p_t) ** gamma) * math.log(p_t)
            total += y[n, c] * weights[c] * inner
        rows.append(total)
    return rows


def fed_dsb_focal(reduction: str, **params) -> torch.nn.Module:
    """A dsb_focal loss fed features in which class k spreads k+1 times wider than class 0."""
    loss = create_loss("dsb_focal", num_classes=K, update_every=1, reduction=reduction, **params)
    gen = torch.Generator().manual_seed(2)
    labels = torch.arange(K).repeat_interleave(4)
    scale = (labels.float() + 1).unsqueeze(1)
    loss.update_features(
        torch.ones(len(labels), 8) + torch.randn(len(labels), 8, generator=gen) * scale / 10, labels
    )
    return loss


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("kind", ["int", "soft"])
def test_dsb_focal_softmax_form_is_focal_weighted_by_class_weights(kind, reduction):
    loss = fed_dsb_focal(reduction, form="softmax")
    weights = loss.class_weights.tolist()
    assert weights == sorted(weights, reverse=True) and len(set(weights)) == K
    logits, target = batch(kind)
    x, y = as_numpy(logits, target)
    check(loss, logits, target, ref_focal(x, y, 2.0, weights), reduction)


@pytest.mark.parametrize("gamma", [2.0, 0.5, 0.0])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("kind", ["int", "soft"])
def test_dsb_focal_default_is_the_seeds_sigmoid_equation(kind, reduction, gamma):
    loss = fed_dsb_focal(reduction, gamma=gamma)
    assert loss.form == "sigmoid"
    weights = loss.class_weights.tolist()
    assert weights == sorted(weights, reverse=True) and len(set(weights)) == K
    logits, target = batch(kind)
    x, y = as_numpy(logits, target)
    check(loss, logits, target, ref_dsb_sigmoid(x, y, gamma, weights), reduction)


def test_dsb_focal_hand_computed_two_classes():
    # z = (0, ln 3): s = (1/2, 3/4). Class 0 with weights (2, 1/2), gamma 2:
    # 2 * [-(1/2)^2 ln(1/2) - (3/4)^2 ln(1/4)] = 2 * (ln2/4 + 9 ln2/8) = 11 ln2 / 4
    loss = create_loss("dsb_focal", num_classes=2)
    loss.class_weights.copy_(torch.tensor([2.0, 0.5]))
    logits = torch.tensor([[0.0, math.log(3.0)]])
    assert loss(logits, torch.tensor([0])).item() == pytest.approx(11 * math.log(2) / 4, rel=1e-6)
    # class 1: 1/2 * [-(1/2)^2 ln(1/2) - (1/4)^2 ln(3/4)] = ln2/8 - ln(3/4)/32
    expected = math.log(2) / 8 - math.log(0.75) / 32
    assert loss(logits, torch.tensor([1])).item() == pytest.approx(expected, rel=1e-6)


def test_dsb_focal_raw_weights_are_inverse_scales_in_bits():
    raw = fed_dsb_focal("mean", normalize=False)
    scales = raw.scales.numpy()
    np.testing.assert_allclose(raw.class_weights.numpy(), 1.0 / scales, rtol=1e-6)
    normalised = fed_dsb_focal("mean")
    np.testing.assert_allclose(
        normalised.class_weights.numpy(), (1 / scales) / np.mean(1 / scales), rtol=1e-6
    )


def test_dsb_focal_state_resumes_the_pools_and_the_update_count():
    spread, tight = spread_and_tight_features()
    features, labels = torch.cat([spread, tight]), torch.tensor([0] * 10 + [1] * 6)
    loss = create_loss("dsb_focal", num_classes=2, pool_size=4, update_every=3)
    loss.update_features(features[:5], labels[:5])
    state = loss.state_dict()
    assert {"feature_pool", "pool_count", "pool_next", "stale", "_extra_state"} <= set(state)
    resumed = create_loss("dsb_focal", num_classes=2, pool_size=4, update_every=3)
    resumed.load_state_dict(state)
    for each in (loss, resumed):  # the third call refreshes both: same pools, same count
        each.update_features(features[5:10], labels[5:10])
        assert torch.equal(each.class_weights, torch.ones(2))
        each.update_features(features[10:], labels[10:])
    assert not torch.equal(loss.class_weights, torch.ones(2))
    for key, value in loss.state_dict().items():
        other = resumed.state_dict()[key]
        assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other


@pytest.mark.parametrize("params", [{"form": "focal"}, {"normalize": "yes"}])
def test_dsb_focal_refuses_unknown_forms(params):
    with pytest.raises(RecipeError, match="form|normalize"):
        create_loss("dsb_focal", **params)


def test_dsb_focal_sizes_at_first_forward_and_round_trips_its_weights():
    spread, tight = spread_and_tight_features()
    loss = create_loss("dsb_focal", update_every=1)
    with pytest.raises(RecipeError, match="num_classes"):
        loss.update_features(spread, torch.zeros(10, dtype=torch.long))
    logits, labels = batch("int")
    loss(logits, labels)
    assert loss.class_weights.shape == (K,)
    loss.update_features(torch.cat([spread, tight]), torch.tensor([0] * 10 + [3] * 6))
    fresh = create_loss("semantic_scale_focal")
    fresh.load_state_dict(loss.state_dict())
    torch.testing.assert_close(fresh.class_weights, loss.class_weights)
    torch.testing.assert_close(fresh(logits, labels), loss(logits, labels))
    with pytest.raises(RecipeError, match="sized for"):
        loss(torch.zeros(2, K + 1), torch.tensor([0, 1]))
    with pytest.raises(RecipeError, match="outside"):
        loss.update_features(spread[:2], torch.tensor([0, K]))


def test_scales_of_many_classes_are_computed_in_chunks_alike():
    num_classes = 70  # more than one chunk of classes
    loss = create_loss("dsb_focal", num_classes=num_classes, pool_size=4, update_every=1)
    features = torch.randn(3 * num_classes, 5, generator=torch.Generator().manual_seed(3))
    labels = torch.arange(num_classes).repeat(3)
    loss.update_features(features, labels)
    for c in (0, 63, 64, 69):
        expected = ref_semantic_scale(unit_rows(features[labels == c]))
        assert loss.scales[c].item() == pytest.approx(expected, rel=1e-6)  # float32 pools
    assert loss.class_weights.mean().item() == pytest.approx(1.0)
