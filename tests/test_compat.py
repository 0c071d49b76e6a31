"""ecmctl.engine.compat: each workaround is shown to be needed (failure without it), then to work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import lvis.eval
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from ecmctl.engine import compat

# --- a small LVIS-format ground truth -------------------------------------------------------------------

CATEGORIES = [  # one per LVIS frequency group
    {"id": 1, "name": "rare_thing", "frequency": "r", "image_count": 1, "instance_count": 1,
     "synset": "r.n.01"},
    {"id": 2, "name": "common_thing", "frequency": "c", "image_count": 20, "instance_count": 30,
     "synset": "c.n.01"},
    {"id": 3, "name": "frequent_thing", "frequency": "f", "image_count": 200, "instance_count": 500,
     "synset": "f.n.01"},
]
CLASSES = tuple(c["name"] for c in CATEGORIES)
# image id -> [(category id, xywh box)]; boxes are "medium" (32^2 < area < 96^2)
BOXES = {
    1: [(1, [10, 10, 40, 40]), (2, [60, 20, 50, 40]), (3, [20, 60, 45, 45])],
    2: [(2, [5, 5, 50, 50]), (3, [70, 70, 40, 50])],
    3: [(2, [30, 30, 40, 40]), (3, [80, 10, 35, 45])],
    4: [(3, [15, 15, 60, 40]), (3, [60, 70, 50, 50])],
}


def write_gt(path) -> str:
    images = [{"id": i, "width": 128, "height": 128, "coco_url": f"http://x/val2017/{i:012d}.jpg",
               "neg_category_ids": [], "not_exhaustive_category_ids": []} for i in BOXES]
    anns = []
    for img_id, boxes in BOXES.items():
        for cat, (x, y, w, h) in boxes:
            anns.append({"id": len(anns) + 1, "image_id": img_id, "category_id": cat, "bbox": [x, y, w, h],
                         "area": w * h, "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]})
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": CATEGORIES}))
    return str(path)


def perfect_dets(img_ids) -> list[dict]:
    return [{"image_id": i, "category_id": cat, "bbox": box, "score": 0.9}
            for i in img_ids for cat, box in BOXES[i]]


def run_lvis_eval(gt_file: str, dets: list[dict]) -> dict:
    gt = lvis.LVIS(gt_file)
    ev = lvis.LVISEval(gt, lvis.LVISResults(gt, dets), iou_type="bbox")
    ev.run()
    return ev.get_results()


# --- a. lvis 0.5.3 np.float ------------------------------------------------------------------------------


def test_lvis_eval_np_float(tmp_path, monkeypatch):
    gt = write_gt(tmp_path / "gt.json")
    monkeypatch.setattr(lvis.eval, "np", np)  # the fix undone: lvis.eval sees the real numpy 2
    with pytest.raises(AttributeError, match="float"):
        run_lvis_eval(gt, perfect_dets(BOXES))

    compat.apply()
    res = run_lvis_eval(gt, perfect_dets(BOXES))
    for key in ("AP", "AP50", "AP75", "APm", "APr", "APc", "APf"):
        assert res[key] == pytest.approx(1.0), key
    assert res["APs"] == res["APl"] == -1  # no small/large boxes
    assert not hasattr(np, "float")  # the fix stays inside lvis.eval


def test_apply_is_idempotent():
    before = (lvis.eval.np, len(torch.serialization.get_safe_globals()))
    compat.apply()
    compat.apply()
    assert (lvis.eval.np, len(torch.serialization.get_safe_globals())) == before
    from mmengine.registry import METRICS

    assert compat.scope_registry(METRICS) is compat.scope_registry(METRICS)
    assert list(METRICS.children).count(compat.SCOPE) == 1


# --- b. torch >= 2.6 weights_only and mmengine checkpoints ---------------------------------------------


def _toy_model():
    """A 2-layer regressor as an mmengine BaseModel (counts the training steps it runs)."""
    from mmengine.model import BaseModel

    class Toy(BaseModel):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 1))
            self.steps = 0

        def forward(self, inputs, targets=None, mode="tensor"):
            out = self.net(inputs).squeeze(-1)
            if mode == "loss":
                self.steps += 1
                return {"loss": ((out - targets) ** 2).mean()}
            return out

    return Toy()


class ToyDataset(Dataset):
    metainfo = {"classes": ("a", "b"), "palette": [(1, 2, 3)]}

    def __len__(self):
        return 8

    def __getitem__(self, i):
        x = torch.randn(2, generator=torch.Generator().manual_seed(i))
        return {"inputs": x, "targets": x.sum()}


def _toy_runner(work_dir, max_iters: int, resume: bool, name: str):
    from mmengine.runner import Runner

    return Runner(
        model=_toy_model(), work_dir=str(work_dir), experiment_name=name, resume=resume,
        train_dataloader=dict(dataset=ToyDataset(), sampler=dict(type="DefaultSampler", shuffle=True),
                              collate_fn=dict(type="default_collate"), batch_size=2, num_workers=0),
        optim_wrapper=dict(optimizer=dict(type="SGD", lr=0.01, momentum=0.9), clip_grad=dict(max_norm=5.0)),
        param_scheduler=[dict(type="LinearLR", start_factor=0.1, by_epoch=False, begin=0, end=2),
                         dict(type="MultiStepLR", milestones=[3], by_epoch=False, begin=0, end=max_iters)],
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        default_hooks=dict(checkpoint=dict(type="CheckpointHook", interval=2, by_epoch=False),
                           logger=dict(type="LoggerHook", interval=1)),
        log_level="WARNING",
    )


LOAD_WITHOUT_FIX = textwrap.dedent("""
    import sys
    from mmengine.runner import CheckpointLoader  # what Runner.resume / load_checkpoint use
    CheckpointLoader.load_checkpoint(sys.argv[1], map_location="cpu")
""")


def test_resume_with_weights_only_torch_load(tmp_path):
    compat.apply()
    first = _toy_runner(tmp_path, max_iters=2, resume=False, name="first")
    first.train()
    ckpt = tmp_path / "iter_2.pth"
    assert ckpt.is_file()

    env = {k: v for k, v in os.environ.items() if not k.startswith("TORCH_FORCE_")}
    proc = subprocess.run([sys.executable, "-c", LOAD_WITHOUT_FIX, str(ckpt)], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode != 0
    assert "mmengine.logging.history_buffer.HistoryBuffer" in proc.stderr

    second = _toy_runner(tmp_path, max_iters=4, resume=True, name="second")
    second.train()
    assert second.iter == 4
    assert second.model.steps == 2  # resumed at iteration 2, not restarted
    assert len(second.message_hub.get_scalar("train/loss").data[0]) == 4  # HistoryBuffer came back
    lrs = second.message_hub.get_scalar("train/lr").data[0]
    assert lrs.tolist() == pytest.approx([0.001, 0.01, 0.01, 0.01])  # the LinearLR warm-up did not restart


def test_checkpoint_getattr_is_restricted(tmp_path):
    from mmengine.logging.history_buffer import HistoryBuffer

    compat.apply()
    path = tmp_path / "x.pth"
    torch.save({"stats": dict(HistoryBuffer._statistics_methods)}, path)  # getattr(HistoryBuffer, 'mean')
    assert torch.load(path)["stats"]["mean"] is HistoryBuffer.mean
    torch.save({"f": HistoryBuffer.update}, path)  # pickled as getattr(HistoryBuffer, 'update')
    with pytest.raises(Exception, match="refusing getattr"):
        torch.load(path)


# --- c. the metric ecmctl evaluates with, built as mmdet's Runner builds it ------------------------------


def _samples(img_ids, dets_per_image=None) -> list[dict]:
    """Data samples as mmdet's test loop hands them to a metric: xyxy boxes, labels = index in CLASSES."""
    out = []
    for i in img_ids:
        dets = dets_per_image[i] if dets_per_image else [(c, box, 0.9) for c, box in BOXES[i]]
        bboxes = [[x, y, x + w, y + h] for _, (x, y, w, h), _ in dets]
        out.append({"img_id": i, "ori_shape": (128, 128), "pred_instances": {
            "bboxes": torch.tensor(bboxes, dtype=torch.float32).reshape(-1, 4),
            "scores": torch.tensor([s for *_, s in dets], dtype=torch.float32),
            "labels": torch.tensor([c - 1 for c, *_ in dets], dtype=torch.int64)}})
    return out


def _evaluate(metric, samples) -> dict:
    metric.dataset_meta = {"classes": CLASSES}
    metric.process({}, samples)
    return metric.evaluate(len(samples))


@pytest.fixture
def gt_file(tmp_path):
    return write_gt(tmp_path / "gt.json")


def _streaming(gt_file):
    from mmengine.registry import METRICS

    from ecmctl.engine import lvis_stream_metric

    compat.apply()
    metric = METRICS.build(dict(type="ecmctl.StreamingLVISMetric", ann_file=gt_file))
    assert isinstance(metric, lvis_stream_metric.StreamingLVISMetric)
    return metric


def test_metric_scores_only_evaluated_images(gt_file):
    """mmdet 3.3's LVISMetric sets params.imgIds, which lvis-api never reads: images that were not run count
    as misses. ecmctl's metric scores exactly the images it was given."""
    from mmdet.evaluation.metrics.lvis_metric import LVISMetric

    unpatched = _evaluate(LVISMetric(ann_file=gt_file), _samples([1, 2]))
    assert unpatched["lvis/bbox_AP"] < 0.7  # images 3 and 4 were never run, yet count as misses
    metric = _streaming(gt_file)
    res = _evaluate(metric, _samples([1, 2]))
    for key in ("AP", "AP50", "AP75", "APr", "APc", "APf"):  # unrounded, as lvis-api computes them
        assert res[f"lvis/bbox_{key}"] == pytest.approx(1.0, abs=1e-12), key
    res = _evaluate(metric, _samples([1, 2, 3, 4]))  # the same metric object evaluated again, all images
    assert res["lvis/bbox_AP"] == pytest.approx(1.0, abs=1e-12)


def test_ecmctl_types_build_under_mmdet_default_scope(gt_file):
    from mmdet.registry import HOOKS as MMDET_HOOKS
    from mmengine.evaluator import Evaluator
    from mmengine.hooks import Hook
    from mmengine.registry import HOOKS, DefaultScope

    from ecmctl.engine.lvis_stream_metric import StreamingLVISMetric

    compat.apply()
    with DefaultScope.overwrite_default_scope("mmdet"):  # what mmdet configs set; the Runner builds this way
        evaluator = Evaluator([dict(type="ecmctl.StreamingLVISMetric", ann_file=gt_file)])
    assert isinstance(evaluator.metrics[0], StreamingLVISMetric)

    class ProbeHook(Hook):
        pass

    MMDET_HOOKS.register_module(name="ecmctl.ProbeHook", module=ProbeHook, force=True)  # a dotted name
    with DefaultScope.overwrite_default_scope("mmdet"), pytest.raises(KeyError, match="not in the mmdet"):
        HOOKS.build(dict(type="ecmctl.ProbeHook"))  # ... is never found
    compat.scope_registry(MMDET_HOOKS).register_module(name="ProbeHook", module=ProbeHook, force=True)
    with DefaultScope.overwrite_default_scope("mmdet"):
        assert isinstance(HOOKS.build(dict(type="ecmctl.ProbeHook")), ProbeHook)
    assert compat.scope_registry(HOOKS) is compat.scope_registry(MMDET_HOOKS)


def test_metric_keeps_300_detections_per_image(gt_file):
    # image 3 has categories 2 and 3; 250 confident detections of category 1 (not verified on image 3,
    # so LVIS ignores them) come first. Only if more than 250 detections are kept do the true ones count.
    noise = [(1, [float(k % 90), float(k // 90), 20.0, 20.0], 0.99) for k in range(250)]
    truth = [(c, box, 0.01) for c, box in BOXES[3]]
    res = _evaluate(_streaming(gt_file), _samples([3], {3: noise + truth}))
    assert res["lvis/bbox_AP"] == pytest.approx(1.0, abs=1e-12)


def test_metric_without_any_detection_reports_zero(gt_file):
    from mmdet.evaluation.metrics.lvis_metric import LVISMetric

    assert _evaluate(LVISMetric(ann_file=gt_file), _samples([1], {1: []})) == {}  # what mmdet returns
    res = _evaluate(_streaming(gt_file), _samples([1], {1: []}))
    assert res["lvis/bbox_AP"] == 0.0
    assert {f"lvis/bbox_{k}" for k in ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")} <= set(res)


def test_metric_takes_an_empty_float_label_tensor(gt_file, tmp_path):
    """SOLO returns its empty result with float labels; the metric (and its kept detections) index with them."""
    samples = _samples([1], {1: []})
    samples[0]["pred_instances"]["labels"] = torch.zeros(0)  # float32, as SOLO's empty result
    metric = _streaming(gt_file)
    metric.shard_dir = str(tmp_path / "shards")
    assert _evaluate(metric, samples)["lvis/bbox_AP"] == 0.0


def test_torchvision_checkpoint_urls_resolve_without_torchvision():
    """mmdet's R50 configs start from torchvision://resnet50; torchvision is not part of this stack."""
    import importlib.util

    from mmengine.runner import checkpoint

    assert importlib.util.find_spec("torchvision") is None
    original = compat._ORIGINAL_TORCHVISION_MODELS
    with pytest.raises(ModuleNotFoundError, match="torchvision"):
        original()  # mmengine's own lookup
    compat.apply()
    urls = checkpoint.get_torchvision_models()
    assert urls["resnet50"].startswith("https://download.pytorch.org/models/resnet50-")


# --- d. mmdet's mask pasting of boxes outside the image ------------------------------------------------


def test_mask_head_pastes_boxes_outside_the_image():
    """A chunk whose boxes all lie right of the image: mmdet raises in torch.arange; with the fix nothing is
    pasted, and a box inside the image is still pasted as mmdet pastes it."""
    from mmdet.models.roi_heads.mask_heads import FCNMaskHead, fcn_mask_head
    from mmdet.utils import register_all_modules
    from mmengine.config import ConfigDict

    register_all_modules()  # the head builds its loss from mmdet's registry
    head = FCNMaskHead(num_convs=0, in_channels=4, conv_out_channels=4, num_classes=2).eval()
    masks = torch.rand(2, 2, 28, 28)
    outside = torch.tensor([[120.0, 10.0, 140.0, 30.0], [130.0, 5.0, 150.0, 25.0]])
    inside = torch.tensor([[10.0, 10.0, 40.0, 50.0], [20.0, 5.0, 60.0, 25.0]])
    cfg = ConfigDict(mask_thr_binary=0.5)

    def predict(boxes):
        meta = {"ori_shape": (64, 100), "scale_factor": (1.0, 1.0)}
        return head._predict_by_feat_single(masks, boxes, torch.tensor([0, 1]), meta, cfg, rescale=False)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fcn_mask_head, "_do_paste_mask", compat._ORIGINAL_PASTE_MASK)  # the fix undone
        with pytest.raises(RuntimeError, match="inconsistent with step sign"):
            predict(outside)
        want = predict(inside)
    assert not predict(outside).any()
    assert torch.equal(predict(inside), want) and want.any()


# --- e. mmcv's MaskedConv2d on the CPU --------------------------------------------------------------------


def test_masked_conv_runs_on_the_cpu():
    """Without the fix mmcv has no CPU kernel; with it, each masked position is the convolution of its own
    patch (computed here patch by patch with unfold) and every other position is 0."""
    import torch.nn.functional as F
    from mmcv.ops import MaskedConv2d

    torch.manual_seed(0)
    conv = MaskedConv2d(3, 4, 3, padding=1).eval()
    x = torch.randn(1, 3, 6, 7)
    mask = (torch.rand(1, 6, 7) > 0.5).float()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(MaskedConv2d, "forward", compat._ORIGINAL_MASKED_CONV_FORWARD)  # the fix undone
        with pytest.raises(RuntimeError, match="not found"):
            conv(x, mask)
    with torch.no_grad():
        out = conv(x, mask)
        patches = F.unfold(x, 3, padding=1)[0]  # (3*3*3, 6*7)
        ref = (conv.weight.view(4, -1) @ patches + conv.bias[:, None]).view(4, 6, 7) * mask
    torch.testing.assert_close(out[0], ref)
    assert torch.equal(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1))  # no mask: plain conv
