"""Mixed precision: every ECM form computes its surrogate and its loss in float32 inside autocast, with LVIS v1's
real weights (ecmctl.ecm.weights.weights_document of the built-in LVIS v1 counts; r = 6.3313 for the forms with
a background class), on labels that include the rarest and the most frequent class; and `train.amp` picks its
dtype on each rank.

Per form and autocast dtype (bf16, and fp16 where this torch's CPU autocast supports it):
- float32 logits inside autocast (a head whose last layer autocast left in float32, or any caller): loss and
  gradient equal the float32 computation, relative error <= 1e-3 (measured: 0, the same float32 operations);
- low-precision logits (what a head's conv/linear under autocast returns): the loss equals the float32 loss of the
  same values (<= 1e-3) and the gradient, returned in the logits' own dtype, differs from the float32 one by that
  dtype's rounding only (one rounding: <= 2^-8 relative for bf16, 2^-11 for fp16, normwise);
- no operation of the loss's forward or backward computes in fp16/bf16 (a dispatch-mode record of every aten op:
  only the casts into float32 and of the gradient back into the logits' dtype touch low precision);
- finite loss and gradients at |logit| = 50 (probabilities sigma(+-50), 0 and 1 in fp16, for the heatmap form).
A control shows the tolerance has teeth: the ECM focal surrogate computed in bf16 itself is off by far more.

CUDA is not exercised here (no GPU in the test environment): the same code disables autocast for the logits'
device type (ecmctl.losses.ecm_loss.autocast_off), and CUDA's autocast lowers more ops than the CPU's (e.g. `mv`,
which ECMLoss uses, inside that block).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ecmctl.dataset.lvis import builtin_counts
from ecmctl.ecm.weights import weights_document

LOW = (torch.float16, torch.bfloat16)
TOL = 1e-3
GRAD_ROUNDING = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}  # one rounding to the dtype (x2 margin)
PAPER_R = 6.3313
N = 48  # predictions per call


def cpu_autocast_supports(dtype: torch.dtype) -> bool:
    """Whether torch.autocast('cpu', dtype) really computes in `dtype` (older torch warns and disables itself)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.autocast("cpu", dtype=dtype):
            a = torch.ones(2, 2)
            return torch.is_autocast_enabled("cpu") and (a @ a).dtype == dtype


DTYPES = [pytest.param(torch.bfloat16, id="bf16"),
          pytest.param(torch.float16, id="fp16", marks=pytest.mark.skipif(
              not cpu_autocast_supports(torch.float16),
              reason=f"torch {torch.__version__}: CPU autocast has no float16 (added in torch 2.4; CUDA-only before)"))]


@pytest.fixture(scope="module")
def lvis(tmp_path_factory):
    """LVIS v1's weights files (foreground only; with background at r = 6.3313) and the rarest and the most
    frequent class."""
    counts = builtin_counts("lvis_v1")
    out = tmp_path_factory.mktemp("lvis_weights")
    files = {}
    for key, r in (("fg", None), ("bg", PAPER_R)):
        files[key] = str(out / f"{key}.json")
        with open(files[key], "w") as f:
            json.dump(weights_document(counts, counts["source"]["sha256"], r), f)
    n = [c["instance_count"] for c in counts["categories"]]
    return dict(files=files, C=len(n), rare=n.index(min(n)), frequent=n.index(max(n)))


@dataclass
class Form:
    """One ECM loss: how to build it, its inputs, and how to call it on the differentiated tensor x."""

    name: str
    build: Callable[[dict], torch.nn.Module]
    inputs: Callable[[dict, torch.Tensor], tuple[torch.Tensor, Callable]]  # (x, call(loss, x)) from logits
    background: bool = False


def _labels(lv: dict, n: int, with_bg: bool) -> torch.Tensor:
    """Labels cycling through the rarest class, the most frequent one and (with_bg) background = C."""
    pool = [lv["rare"], lv["frequent"]] + ([lv["C"]] if with_bg else [])
    return torch.tensor([pool[i % len(pool)] for i in range(n)])


def _quality(n: int) -> torch.Tensor:
    return torch.linspace(0.1, 0.95, n)


def _onehot(lv: dict, labels: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    y = (labels.view(-1, 1) == torch.arange(lv["C"])).float()
    return y * scale.view(-1, 1) if scale is not None else y


def _roi(lv, s):
    labels = _labels(lv, s.size(0), True)
    return s, lambda loss, x: loss(x, labels)


def _focal(lv, s):
    labels = _labels(lv, s.size(0), True)  # C = background for a dense head
    return s[:, :-1], lambda loss, x: loss(x, labels)


def _varifocal(lv, s):
    target = _onehot(lv, _labels(lv, s.size(0), False), _quality(s.size(0)))
    return s[:, :-1], lambda loss, x: loss(x, target)


def _qfl(lv, s):
    labels, scores = _labels(lv, s.size(0), True), _quality(s.size(0))
    return s[:, :-1], lambda loss, x: loss(x, (labels, scores))


def _bce(lv, s):
    target = _onehot(lv, _labels(lv, s.size(0), False), _quality(s.size(0)))  # YOLOX: one-hot x IoU
    return s[:, :-1], lambda loss, x: loss(x, target)


def _ghm(lv, s):
    labels = _labels(lv, s.size(0), True)
    return s[:, :-1], lambda loss, x: loss(x, labels, torch.ones(s.size(0)))


def _heatmap(lv, s):
    """Probabilities (the heads apply the sigmoid), a gaussian-ish target with 1 at the label's column."""
    target = _onehot(lv, _labels(lv, s.size(0), False)) * 0.999 + 0.0005
    target[torch.arange(s.size(0)), _labels(lv, s.size(0), False)] = 1.0
    return torch.sigmoid(s[:, :-1].float()).to(s.dtype), lambda loss, x: loss(x, target)


def _loss(type_: str, key: str, **kw):
    def build(lv):
        from mmdet.registry import MODELS

        import ecmctl.losses  # noqa: F401  (registers them)

        return MODELS.build(dict(type=type_, weights_file=lv["files"][key], **kw))

    return build


FORMS = [
    Form("ECMLoss", _loss("ECMLoss", "bg"), _roi, background=True),
    Form("ECMNoObjectLoss", _loss("ECMNoObjectLoss", "bg"), _roi, background=True),
    Form("ECMFocalLoss", _loss("ECMFocalLoss", "fg"), _focal),
    Form("ECMVarifocalLoss", _loss("ECMVarifocalLoss", "fg"), _varifocal),
    Form("ECMQualityFocalLoss", _loss("ECMQualityFocalLoss", "fg"), _qfl),
    Form("ECMSigmoidBCELoss", _loss("ECMSigmoidBCELoss", "fg"), _bce),
    Form("ECMGHMC", _loss("ECMGHMC", "fg", bins=30), _ghm),  # momentum 0: no running state between calls
    Form("ECMGaussianFocalLoss", _loss("ECMGaussianFocalLoss", "fg"), _heatmap),
]


def _logits(lv: dict, scale: float | None = None) -> torch.Tensor:
    """N x (C + 1) logits: standard normal x 3, or +-`scale` with random signs."""
    g = torch.Generator().manual_seed(0)
    s = torch.randn(N, lv["C"] + 1, generator=g) * 3
    return s.sign() * scale if scale is not None else s


def _run(form: Form, lv: dict, x: torch.Tensor, call: Callable, dtype: torch.dtype | None, scale: float = 1.0):
    """(loss, grad) of `form` at x (a fresh leaf), inside CPU autocast to `dtype` (None: none); the backward pass
    of loss x `scale`, the gradient (x's dtype) then divided by it in float32, as AmpOptimWrapper's GradScaler
    unscales."""
    loss_fn = form.build(lv)
    x = x.detach().clone().requires_grad_(True)
    ctx = torch.autocast("cpu", dtype=dtype) if dtype is not None else torch.autocast("cpu", enabled=False)
    with ctx:
        loss = call(loss_fn, x)
    (loss * scale).backward()
    return loss.detach(), x.grad if scale == 1.0 else x.grad.float() / scale


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (normwise: elementwise ratios of near-zero gradients say nothing)."""
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("form", FORMS, ids=lambda f: f.name)
def test_float32_logits_inside_autocast_match_float32(lvis, form, dtype):
    x, call = form.inputs(lvis, _logits(lvis))
    ref_loss, ref_grad = _run(form, lvis, x, call, None)
    loss, grad = _run(form, lvis, x, call, dtype)
    assert loss.dtype == torch.float32 and grad.dtype == torch.float32
    errs = (_rel(loss, ref_loss), _rel(grad, ref_grad))
    print(f"{form.name} {dtype}: float32 logits, relative error loss {errs[0]:.2e}, grad {errs[1]:.2e}")
    assert max(errs) <= TOL


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("form", FORMS, ids=lambda f: f.name)
def test_low_precision_logits_give_the_float32_loss_of_their_values(lvis, form, dtype):
    x, call = form.inputs(lvis, _logits(lvis))
    low = x.to(dtype)
    ref_loss, ref_grad = _run(form, lvis, low.float(), call, None)  # float32 math on the very same values
    # fp16 gradients of a mean over N x 1203 elements (~1e-5) are subnormal in fp16 unless the loss is scaled, as
    # AmpOptimWrapper's dynamic GradScaler does: the scale it settles on, the largest power of 2 that does not
    # overflow (here: the largest gradient between 2^14 and 2^15); bf16 has float32's range and needs none
    scale = 2.0 ** math.floor(math.log2(2.0**15 / float(ref_grad.abs().max()))) if dtype == torch.float16 else 1.0
    loss, grad = _run(form, lvis, low, call, dtype, scale=scale)
    assert loss.dtype == torch.float32 and (grad.dtype == dtype or scale != 1.0)
    errs = (_rel(loss, ref_loss), _rel(grad, ref_grad))
    print(f"{form.name} {dtype}: {dtype} logits, relative error loss {errs[0]:.2e}, grad {errs[1]:.2e} "
          f"(its rounding to {dtype})")
    assert errs[0] <= TOL and errs[1] <= GRAD_ROUNDING[dtype]


class LowPrecisionOps(TorchDispatchMode):
    """Records every aten op that reads or writes an fp16/bf16 tensor, other than the casts."""

    ALLOWED = {"_to_copy", "detach"}  # the casts into float32 and of the gradient back; autograd's detach of it

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if name not in self.ALLOWED:
            tensors = [t for t in tree_flatten((args, kwargs or {}, out))[0] if isinstance(t, torch.Tensor)]
            if any(t.dtype in LOW for t in tensors):
                self.ops.append(name)
        return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("form", FORMS, ids=lambda f: f.name)
def test_no_operation_of_the_loss_runs_in_low_precision(lvis, form, dtype):
    x, call = form.inputs(lvis, _logits(lvis))
    loss_fn = form.build(lvis)
    for leaf in (x, x.to(dtype)):  # float32 logits, and the low-precision logits a head under autocast returns
        leaf = leaf.detach().clone().requires_grad_(True)
        with LowPrecisionOps() as record, torch.autocast("cpu", dtype=dtype):
            call(loss_fn, leaf).backward()
        assert record.ops == [], (leaf.dtype, sorted(set(record.ops)))


@pytest.mark.parametrize("dtype", [None, *DTYPES])
@pytest.mark.parametrize("form", FORMS, ids=lambda f: f.name)
def test_finite_at_logit_50(lvis, form, dtype):
    """|logit| = 50 everywhere (label columns included): 2s + b reaches +-100 + log w+/w-; the heatmap form gets
    sigma(+-50): 1 and 2e-22 in float32, 1 and 0 in fp16/bf16."""
    x, call = form.inputs(lvis, _logits(lvis, scale=50.0))
    for leaf in (x,) if dtype is None else (x, x.to(dtype)):
        loss, grad = _run(form, lvis, leaf, call, dtype)
        assert torch.isfinite(loss).all() and torch.isfinite(grad).all(), (form.name, dtype, leaf.dtype)


@pytest.mark.parametrize("dtype, above", [pytest.param(torch.bfloat16, TOL, id="bf16"),
                                          pytest.param(torch.float16, TOL / 10, id="fp16")])
def test_control_the_surrogate_in_low_precision_is_not_exact(lvis, dtype, above):
    """What the checks above guard against: ECM's focal surrogate z = 2s + log w+ - log w- and its per-element loss
    computed in the low dtype itself are off by 6e-3 (bf16, well over the 1e-3 tolerance) and 8e-4 (fp16: within
    it, which is why the dispatch record, not the tolerance, is what rules fp16 math out); the float32 path: 0."""
    from ecmctl.losses import ECMFocalLoss, ecm_focal_loss

    loss_fn = ECMFocalLoss(lvis["files"]["fg"])
    x, _ = _focal(lvis, _logits(lvis))
    y = _onehot(lvis, _labels(lvis, N, False))
    exact = ecm_focal_loss(x, y, loss_fn.bias, loss_fn.det_weight)
    with LowPrecisionOps() as record:
        low = ecm_focal_loss(x.to(dtype), y.to(dtype), loss_fn.bias.to(dtype), loss_fn.det_weight.to(dtype)).float()
    print(f"ECM focal loss computed in {dtype}: per-element relative error {_rel(low, exact):.1e}")
    assert _rel(low, exact) > above
    assert {"add", "sigmoid", "binary_cross_entropy_with_logits"} <= set(record.ops)  # the record sees such math


# ------------------------------------------------------------------------------------ train.amp's dtype, per rank


def _amp_config(**wrapper):
    from mmengine.config import Config

    return Config(dict(optim_wrapper=dict(type="AmpOptimWrapper", optimizer=dict(type="SGD", lr=0.02), **wrapper)))


@pytest.mark.parametrize("bf16, expected", [(True, "bfloat16"), (False, "float16")])
def test_amp_dtype_is_decided_on_the_rank(monkeypatch, bf16, expected):
    """dtype `auto` (no dtype in the written config): bfloat16 where the rank's GPU supports it natively, else
    float16; a dtype the user named is kept; no GPU is one line; no AMP, nothing."""
    from ecmctl.core.errors import UserError
    from ecmctl.engine.runner import amp_dtype

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    asked = []

    def supported(including_emulation=True):
        asked.append(including_emulation)
        return bf16

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", supported)
    mm = _amp_config()
    assert amp_dtype(mm) == expected and mm.optim_wrapper.dtype == expected and asked == [False]
    assert amp_dtype(_amp_config(dtype="float16")) == "float16"
    from mmengine.config import Config

    assert amp_dtype(Config(dict(optim_wrapper=dict(type="OptimWrapper")))) is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="train.amp=true needs a GPU"):
        amp_dtype(_amp_config())


def test_amp_config_and_cpu_refusal(tmp_path):
    """train.amp=true: AmpOptimWrapper, no dtype for `auto`, the named one otherwise; on this CPU-only machine
    `train` refuses before any run directory is made."""
    from typer.testing import CliRunner

    from ecmctl.cli import app
    from ecmctl.core.config import compose
    from ecmctl.engine.builder import build_mm_config

    auto = build_mm_config(compose(["loss=bce", "train.amp=true"]), ["a", "b"], tmp_path)
    assert auto.optim_wrapper.type == "AmpOptimWrapper" and "dtype" not in auto.optim_wrapper
    named = build_mm_config(compose(["loss=bce", "train.amp=true", "train.amp_dtype=float16"]), ["a"], tmp_path)
    assert named.optim_wrapper.dtype == "float16"
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: the CPU refusal cannot be shown here")
    res = CliRunner().invoke(app, ["train", "train.amp=true", f"run_root={tmp_path / 'runs'}",
                                   f"data_root={tmp_path / 'data'}"])
    assert res.exit_code == 2 and "train.amp=true needs a GPU" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "runs").exists()
