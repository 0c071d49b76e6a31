"""Every workaround for the pinned old stack (lvis 0.5.3, mmengine 0.10.7, mmdet 3.3.0) on new numpy/torch.

`apply()` installs all of them; it is idempotent (each fix checks the live state, not a flag) and runs
once on import too, so ``custom_imports=dict(imports=['ecmctl.engine.compat'])`` in a dumped mmengine config is
enough in a process that never called it (a bare ``tools/train.py`` run, a launcher's worker).
Importing this module therefore imports torch, lvis, mmengine and mmdet: import it only where those are used.

Fixes:
  * lvis 0.5.3 ``LVISEval.accumulate`` uses ``np.float`` (removed in numpy 1.24): `lvis.eval` gets its own
    numpy proxy that has ``float``; numpy itself is not touched.
  * torch >= 2.6 loads with ``weights_only=True``: mmengine checkpoints (``message_hub``) hold HistoryBuffer
    objects with numpy arrays/scalars; exactly those globals are allow-listed (`CHECKPOINT_SAFE_GLOBALS`).
  * ``'ecmctl.X'`` types are found only in registries scoped ``ecmctl`` (`scope_registry`).
  * mmdet's full-size configs start from ``torchvision://resnet50``; mmengine imports torchvision just to
    look up its URL, and torchvision is not installed (PyPI's build does not load beside the CPU torch):
    without torchvision the URL comes from mmengine's own shipped table.
  * mmdet 3.3's ``_do_paste_mask`` (FCNMaskHead, CPU path) raises "upper bound and lower bound inconsistent
    with step sign" when every box of a chunk lies outside the image (a diverged or freshly initialised
    model, e.g. QueryInst): such a chunk pastes nothing (`_paste_mask_within_image`).
  * mmcv 2.1's ``MaskedConv2d`` (Guided Anchoring's test-time head) has no CPU kernel: on the CPU it computes
    what mmcv's own NPU path computes, the full convolution zeroed outside the mask (`_masked_conv_on_cpu`).
Not needed here: mmdet's LVISMetric scores a subset of images against all of them (it sets ``params.imgIds``,
which lvis-api never reads) and its CocoMetric wants ``iscrowd`` on LVIS annotations; ecmctl evaluates with
its own ``ecmctl.StreamingLVISMetric`` (ecmctl.evaluation), which has neither problem.
"""

from __future__ import annotations

import importlib
import pickle

import lvis.eval
import numpy as np
import torch
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.registry import Registry

SCOPE = "ecmctl"


# --- a. lvis 0.5.3 + numpy >= 1.24 -------------------------------------------------------------------


class _NumpyForLvis:
    """numpy as lvis 0.5.3's eval.py expects it: ``np.float`` is the builtin float (what it aliased)."""

    float = float

    def __getattr__(self, name: str):
        return getattr(np, name)

    def __repr__(self) -> str:
        return f"<numpy proxy for lvis.eval (np.float = float) over {np!r}>"


def _fix_lvis_np_float() -> None:
    # lvis/eval.py:361-362 `.astype(dtype=np.float)` raises AttributeError on numpy >= 1.24 (lvis-api PR #42,
    # never released); scoped to lvis.eval so numpy keeps rejecting np.float everywhere else.
    if not hasattr(lvis.eval.np, "float"):
        lvis.eval.np = _NumpyForLvis()


# --- b. torch >= 2.6 weights_only loading of mmengine checkpoints ------------------------------------

_HISTORY_BUFFER_STATISTICS = ("min", "max", "current", "mean")


def _history_buffer_getattr(obj, name: str):
    """Stands in for ``builtins.getattr`` while unpickling: a pickled HistoryBuffer refers to its statistics
    methods as ``getattr(HistoryBuffer, 'mean')``; nothing else may be looked up."""
    if obj is HistoryBuffer and name in _HISTORY_BUFFER_STATISTICS:
        return getattr(obj, name)
    raise pickle.UnpicklingError(f"ecmctl.engine.compat: refusing getattr({obj!r}, {name!r}) in a weights_only load")


def _numpy_multiarray():
    try:  # numpy >= 2 (numpy.core is a deprecated alias there)
        return importlib.import_module("numpy._core.multiarray")
    except ImportError:  # numpy 1.x
        return importlib.import_module("numpy.core.multiarray")


def _checkpoint_safe_globals() -> list:
    ma = _numpy_multiarray()
    dtype_classes = {type(np.dtype(t)) for t in (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8,
                                                  np.uint16, np.uint32, np.uint64, np.float16, np.float32,
                                                  np.float64)}
    return [
        HistoryBuffer,  # message_hub['log_scalars'] values
        np.ndarray, np.dtype, *sorted(dtype_classes, key=lambda c: c.__name__),  # HistoryBuffer histories
        # ndarray / numpy scalar (e.g. runtime_info['eta']) rebuilders, under numpy 2 and numpy 1 names
        *[(getattr(ma, fn), f"{mod}.{fn}") for fn in ("_reconstruct", "scalar")
          for mod in ("numpy._core.multiarray", "numpy.core.multiarray")],
        (_history_buffer_getattr, "builtins.getattr"),  # HistoryBuffer._statistics_methods entries
    ]


CHECKPOINT_SAFE_GLOBALS: list = _checkpoint_safe_globals()


def _allow_mmengine_checkpoint_globals() -> None:
    # torch >= 2.6 torch.load defaults to weights_only=True and mmengine 0.10.7 does not pass it:
    # resume/load_from fail with "Unsupported global: mmengine.logging.history_buffer.HistoryBuffer".
    # torch keeps these in a set, so adding them again is a no-op.
    add = getattr(torch.serialization, "add_safe_globals", None)
    if add is not None:  # torch < 2.4 has no allow-list (and loads with weights_only=False)
        add(CHECKPOINT_SAFE_GLOBALS)


# --- c. ecmctl's registry scope ------------------------------------------------------------------------


def scope_registry(registry: Registry) -> Registry:
    """The ``ecmctl``-scoped child of `registry`'s mmengine root (e.g. mmengine's HOOKS), made once.

    mmengine reads a dotted ``type`` as ``scope.name``, so ``'ecmctl.X'`` is found only in a registry
    whose scope is ``ecmctl``: the name ``'ecmctl.X'`` registered in mmdet's registry can never be built.
    Hung under the root, ``'ecmctl.X'`` is found with or without mmdet's default scope.
    Usage: ``scope_registry(HOOKS).register_module(name='X')`` -> config ``type='ecmctl.X'``.
    """
    root = registry._get_root_registry()
    child = root.children.get(SCOPE)
    if child is None:
        child = Registry(root.name, parent=root, scope=SCOPE)
    return child


# --- d. torchvision:// checkpoints without torchvision ---------------------------------------------------


def _torchvision_models_without_torchvision() -> dict:
    """mmengine's own URL table for ``torchvision://NAME`` (it ships hub/torchvision_0.12.json)."""
    import os.path as osp

    import mmengine

    try:
        import torchvision  # noqa: F401
    except ImportError:
        return mmengine.load(osp.join(mmengine.__path__[0], "hub", "torchvision_0.12.json"))
    return _ORIGINAL_TORCHVISION_MODELS()


def _resolve_torchvision_urls() -> None:
    global _ORIGINAL_TORCHVISION_MODELS
    from mmengine.runner import checkpoint

    if checkpoint.get_torchvision_models is not _torchvision_models_without_torchvision:
        _ORIGINAL_TORCHVISION_MODELS = checkpoint.get_torchvision_models
        checkpoint.get_torchvision_models = _torchvision_models_without_torchvision


_ORIGINAL_TORCHVISION_MODELS = None


# --- d. mmdet 3.3 mask pasting of boxes outside the image ------------------------------------------------


def _paste_mask_within_image(masks, boxes, img_h, img_w, skip_empty=True):
    """mmdet's `_do_paste_mask`, except that a chunk whose boxes all lie outside the image (an empty paste window)
    pastes an empty region instead of raising in torch.arange."""
    if skip_empty and len(boxes):
        x0 = max(int(boxes[:, 0].min().floor()) - 1, 0)
        y0 = max(int(boxes[:, 1].min().floor()) - 1, 0)
        x1 = min(int(boxes[:, 2].max().ceil()) + 1, int(img_w))
        y1 = min(int(boxes[:, 3].max().ceil()) + 1, int(img_h))
        if x1 <= x0 or y1 <= y0:
            return masks.new_zeros((masks.shape[0], 0, 0)), (slice(0, 0), slice(0, 0))
    return _ORIGINAL_PASTE_MASK(masks, boxes, img_h, img_w, skip_empty)


def _fix_paste_mask_outside_image() -> None:
    global _ORIGINAL_PASTE_MASK
    from mmdet.models.roi_heads.mask_heads import fcn_mask_head

    if fcn_mask_head._do_paste_mask is not _paste_mask_within_image:
        _ORIGINAL_PASTE_MASK = fcn_mask_head._do_paste_mask
        fcn_mask_head._do_paste_mask = _paste_mask_within_image


_ORIGINAL_PASTE_MASK = None


# --- e. mmcv 2.1 MaskedConv2d on the CPU ---------------------------------------------------------------


def _masked_conv_on_cpu(self, input, mask=None):
    """mmcv's MaskedConv2d.forward; on the CPU (no kernel there) the convolution at the masked positions and
    zero elsewhere, bias included, as mmcv's CUDA kernel and NPU path give."""
    if mask is None or input.device.type != "cpu":
        return _ORIGINAL_MASKED_CONV_FORWARD(self, input, mask)
    out = torch.nn.functional.conv2d(input, self.weight, self.bias, self.stride, self.padding, self.dilation,
                                     self.groups)
    return out * (mask > 0).to(out.dtype).unsqueeze(1)


def _fix_masked_conv_on_cpu() -> None:
    global _ORIGINAL_MASKED_CONV_FORWARD
    from mmcv.ops.masked_conv import MaskedConv2d

    if MaskedConv2d.forward is not _masked_conv_on_cpu:
        _ORIGINAL_MASKED_CONV_FORWARD = MaskedConv2d.forward
        MaskedConv2d.forward = _masked_conv_on_cpu


_ORIGINAL_MASKED_CONV_FORWARD = None


# --- all of them ----------------------------------------------------------------------------------------


def apply() -> None:
    """Install every workaround above; safe to call any number of times."""
    _fix_lvis_np_float()  # lvis 0.5.3 LVISEval.accumulate uses np.float, gone since numpy 1.24
    _allow_mmengine_checkpoint_globals()  # torch>=2.6 weights_only load rejects mmengine's HistoryBuffer
    _resolve_torchvision_urls()  # mmdet's R50 configs init from torchvision://, which imports torchvision
    _fix_paste_mask_outside_image()  # mmdet's CPU mask pasting raises when every box is outside the image
    _fix_masked_conv_on_cpu()  # mmcv's MaskedConv2d (Guided Anchoring at test) has no CPU kernel


apply()
