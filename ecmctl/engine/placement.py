"""Put a loss choice into any mmdet detector config, found by walking the model config.

Pure dict surgery on the model config (no detector is built; mmdet is imported only to read the default loss
of a head whose config leaves it out), so it is cheap to test.

- `find_sites` walks the model and returns every *classification site*: a head that predicts the dataset's
  classes and the key of its classification loss (`loss_cls`, TOOD's `initial_loss_cls`, the heatmaps of
  CornerNet and CenterNet). RPN objectness is class-agnostic and keeps its loss; distillation teachers keep
  theirs (they are not trained).
- Each site has an ECM *form* (`ECM_FORMS`): the ECM loss that generalises the site's own loss. Forms with a
  background or no-object class (RoI heads, DETR/MaskFormer queries, YOLACT) need a weights file with a
  measured r, one per such site (`Placement.bg_sites`, in model order: Cascade and HTC stages 0, 1, 2);
  the others share one foreground-only weights file (supplementary section 6).
- `plan_placement` refuses, in one line, a detector whose classification cannot take the chosen loss,
  before anything is written; `apply_loss` edits the config.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass

from ecmctl.core.errors import UserError

# classification-loss keys, in the order they are looked for in a head's config
CLS_LOSS_KEYS = ("loss_cls", "initial_loss_cls", "aux_loss_cls", "loss_heatmap", "loss_center_heatmap")
# subtrees whose heads are class-agnostic (proposals) or not trained (distillation teachers): their losses stay
SKIP_LOSS_UNDER = ("rpn_head", "teacher_bbox_head", "teacher_config", "teacher_backbone", "teacher_neck")
# heads whose classification loss is written in their own code: no loss module to replace
HAND_WRITTEN = {
    "AutoAssignHead": "computes its classification loss in code (positive and negative bag losses of "
                      "AutoAssign's weighting), with no loss_cls module ECM could replace",
    "FreeAnchorRetinaHead": "computes its classification loss in code (FreeAnchor's bag-of-anchors likelihood), "
                            "with no loss_cls module ECM could replace",
    "SSDHead": "computes its softmax classification loss with hard-negative mining in code, with no loss_cls "
               "module ECM could replace",
}
# mmdet head type -> ecmctl's subclass (ecmctl/engine/ecm_heads.py) that scores with the ECM form (no-object
# heads, SABL) or exposes an implicit classification loss (DDQ's dense auxiliary branch)
ECM_HEAD_TYPES = {
    "DETRHead": "ECMDETRHead",
    "MaskFormerHead": "ECMMaskFormerHead",
    "Mask2FormerHead": "ECMMask2FormerHead",
    "MaskFormerFusionHead": "ECMMaskFormerFusionHead",
    "YOLACTHead": "ECMYOLACTHead",
    "SABLHead": "ECMSABLHead",
    "DDQDETRHead": "ECMDDQDETRHead",
}
# a Hungarian matcher's classification cost -> its ECM version (mmdet's TASK_UTILS), for no-object heads
ECM_COST_TYPES = {"ClassificationCost": "ECMClassificationCost"}
# classification losses a head builds in code, made explicit under a config key the ECM subclass reads
IMPLICIT_LOSSES = {"DDQDETRHead": ("aux_loss_cls", dict(type="QualityFocalLoss", use_sigmoid=True, activated=True,
                                                        beta=2.0, loss_weight=1.0))}
# heads whose hard-negative mining keeps a fixed number of negatives per positive *after* their loss has seen
# every anchor (YOLACT's OHEM): r is that ratio, read from the config, not counted at the loss
SAMPLER_RATIO = {"YOLACTHead": ("train_cfg", "neg_pos_ratio")}
# heads that need a language model (text prompts, BERT weights from a model hub): not a closed-vocabulary head
LANGUAGE_HEADS = ("ATSSVLFusionHead", "GroundingDINOHead")
# semantic-segmentation branches (stuff classes from segmentation maps the LVIS/COCO instance format has not)
SEMANTIC_KEYS = ("semantic_head", "semantic_roi_extractor")

# the ECM form of each classification loss: (ECM type, has a background/no-object class)
ECM_FORMS = {
    "FocalLoss": ("ECMFocalLoss", False),
    "QualityFocalLoss": ("ECMQualityFocalLoss", False),
    "VarifocalLoss": ("ECMVarifocalLoss", False),
    "GHMC": ("ECMGHMC", False),
    "GaussianFocalLoss": ("ECMGaussianFocalLoss", False),
    "sigmoid CrossEntropyLoss": ("ECMSigmoidBCELoss", False),
    "softmax CrossEntropyLoss": ("ECMNoObjectLoss", True),  # DETR, MaskFormer, Mask2Former, YOLACT
    "RoI classifier": ("ECMLoss", True),  # any RoI box head: C + 1 sigmoid outputs, the paper's form
}
ECM_TYPES = {form for form, _ in ECM_FORMS.values()}
ROI_ONLY = ("ce", "seesaw")  # baselines defined for RoI box heads only
NATIVE = "native"  # loss type that keeps every site's own loss (what `calibrate` trains with for loss=ecm)
# the long-tail losses ECM is compared against (ecmctl/losses/), by where their form applies (`valid_losses`)
ROI_BASELINES = {"eqlv2": "SyncEQLv2Loss", "eql": "EQLLoss", "fed": "FederatedLoss"}  # RoI box heads
FOCAL_BASELINES = {"efl": "EqualizedFocalLoss"}  # heads whose classification loss is a sigmoid FocalLoss
NEEDS_COUNTS = ("eql", "fed")  # read the class frequencies from the run's counts file (apply_loss's counts_file)


def _as_list(x) -> list:
    return list(x) if isinstance(x, Sequence) and not isinstance(x, (str, Mapping)) else [x]


@dataclass(frozen=True)
class Site:
    """One classification loss of a detector config."""

    path: tuple  # keys (str) and list indices (int) from the model config to the head
    head_type: str
    loss_key: str
    base_loss: str  # the loss the config has (its type, or 'sigmoid/softmax CrossEntropyLoss')
    form: str  # the ECM loss type that replaces it
    background: bool  # the form has a background / no-object class (its weights file needs r)
    roi: bool  # a RoI box head (the baselines ce and seesaw apply)

    @property
    def where(self) -> str:
        return ".".join(str(k) for k in self.path)


@dataclass(frozen=True)
class Placement:
    """The classification sites of a model, and the weights files loss=ecm needs for them."""

    sites: tuple[Site, ...]

    @property
    def bg_sites(self) -> list[Site]:
        return [s for s in self.sites if s.background]

    @property
    def fg_sites(self) -> list[Site]:
        return [s for s in self.sites if not s.background]

    @property
    def kind(self) -> str:
        """'cascade' (several background stages), 'two_stage' (one RoI stage), 'query' (one no-object head)
        or 'one_stage' (foreground-only: dense, Sparse R-CNN, focal DETRs)."""
        bg = self.bg_sites
        if len(bg) > 1:
            return "cascade"
        if bg:
            return "two_stage" if bg[0].roi else "query"
        return "one_stage"

    @property
    def stages(self) -> int:
        """The number of background sites, each calibrated to its own r."""
        return len(self.bg_sites)

    @property
    def needs_fg(self) -> bool:
        return bool(self.fg_sites)


def head_default_loss(head_type: str, key: str) -> dict | None:
    """The default of `key` in the head class's constructor (a head config may leave its loss out, e.g.
    Grid R-CNN's box head inherits BBoxHead's softmax CrossEntropyLoss). Imports mmdet."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    register_all_modules(init_default_scope=False)
    cls = MODELS.get(head_type)
    for klass in getattr(cls, "__mro__", ()):
        try:
            param = inspect.signature(klass.__init__).parameters.get(key)
        except (TypeError, ValueError):
            continue
        if param is not None and isinstance(param.default, Mapping):
            return dict(param.default)
    return None


def walk_dicts(node, path: tuple = ()) -> Iterator[tuple[tuple, MutableMapping]]:
    """Every dict of the config (depth first, in key order) with its path."""
    if isinstance(node, Mapping):
        yield path, node
        for k, v in node.items():
            yield from walk_dicts(v, (*path, k))
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            yield from walk_dicts(v, (*path, i))


def _is_head(path: tuple, node: Mapping) -> bool:
    """A dict under a `*head` key (or an element of a list there, e.g. a Cascade stage)."""
    own = path[-1] if isinstance(path[-1], str) else (path[-2] if len(path) > 1 else "")
    return "type" in node and isinstance(own, str) and own.endswith("head")


# head types that predict no class scores with a classification loss (masks, mask IoU, points, prototypes, context)
NO_CLS_LOSS_SUFFIXES = ("MaskHead", "MaskIoUHead", "PointHead", "Protonet", "SegmHead", "ContextHead")


def _form(path: tuple, head: str, loss: Mapping) -> tuple[str, str, bool, bool]:
    """(base loss, ECM form, background, roi) of one classification loss config."""
    base = str(loss.get("type"))
    roi = "roi_head" in path and base in ("CrossEntropyLoss", "SeesawLoss", "ECMLoss", *ROI_BASELINES.values())
    if base in ECM_TYPES:
        return base, base, base in ("ECMLoss", "ECMNoObjectLoss"), roi
    if roi:
        return ("RoI classifier", *ECM_FORMS["RoI classifier"], True)
    if base == "CrossEntropyLoss":
        base = ("sigmoid " if loss.get("use_sigmoid") else "softmax ") + base
    if base not in ECM_FORMS:
        raise UserError(f"{head} ({'.'.join(map(str, path))}) classifies with {base}, which has no ECM form; "
                        f"ECM forms exist for {', '.join(k for k in ECM_FORMS if k != 'RoI classifier')} and "
                        "RoI box classifiers")
    return (base, *ECM_FORMS[base], False)


def _sites(path: tuple, node: MutableMapping) -> list[Site]:
    """The classification sites of one head config (TOOD has two: its initial and its task-aligned loss)."""
    head = str(node.get("type"))
    if head in LANGUAGE_HEADS:
        raise UserError(f"{head} ({'.'.join(map(str, path))}) classifies by matching text prompts with a language "
                        "model (weights from a model hub), not over a fixed class list; ECM needs per-class logits")
    if any(k in SKIP_LOSS_UNDER for k in path if isinstance(k, str)):
        return []
    if head in HAND_WRITTEN:
        raise UserError(f"{head} {HAND_WRITTEN[head]}")
    if head in IMPLICIT_LOSSES:  # written out, and the head becomes the ecmctl subclass that reads it
        key, default = IMPLICIT_LOSSES[head]
        node.setdefault(key, dict(default))
        node["type"] = head = ECM_HEAD_TYPES[head]
    keys = [k for k in CLS_LOSS_KEYS if isinstance(node.get(k), Mapping)]
    if not keys:
        if "num_classes" not in node or head.endswith(NO_CLS_LOSS_SUFFIXES):
            return []
        default = head_default_loss(head, "loss_cls")
        if default is None:
            return []
        node["loss_cls"] = default  # written out, so the config shows what the head trains with
        keys = ["loss_cls"]
    out = []
    for key in keys:
        base, form, background, roi = _form(path, head, node[key])
        out.append(Site(path=path, head_type=head, loss_key=key, base_loss=base, form=form,
                        background=background, roi=roi))
    return out


def find_sites(model: Mapping) -> list[Site]:
    """Every classification site of a model config, in model order. Refuses heads ECM cannot reach."""
    sites = []
    for path, node in walk_dicts(model):
        if not path or not _is_head(path, node):
            continue
        if any(isinstance(k, str) and (k in SEMANTIC_KEYS) for k in path):
            continue
        sites += _sites(path, node)
    return sites


def plan_placement(model: Mapping) -> Placement:
    """The sites of a model config; refuses a model with none (nothing predicts classes)."""
    sites = find_sites(model)
    if not sites:
        raise UserError(f"detector type {model.get('type')!r} has no head that predicts classes with a loss "
                        "ecmctl can replace (a class-agnostic model such as an RPN?)")
    return Placement(tuple(sites))


def sampler_ratio(model: Mapping, site: Site) -> float | None:
    """The background ratio a head's own sampler fixes (`SAMPLER_RATIO`), or None: measure it."""
    base = next((k for k, v in ECM_HEAD_TYPES.items() if v == site.head_type), site.head_type)
    if base not in SAMPLER_RATIO:
        return None
    value = node_at(model, SAMPLER_RATIO[base])
    return float(value) if isinstance(value, (int, float)) and value > 0 else None


def detector_kind(model: Mapping) -> str:
    """'cascade', 'two_stage', 'query' or 'one_stage', from the config's structure, not its name."""
    return plan_placement(model).kind


def node_at(model, path: Sequence):
    """The node of a config (or a built model: attributes and ModuleList indices) at `path`."""
    node = model
    for k in path:
        node = node[k] if isinstance(node, Mapping) or isinstance(k, int) else getattr(node, k)
    return node


def roi_bbox_heads(model: Mapping) -> list:
    """The RoI box heads in stage order (one per Cascade stage)."""
    return _as_list(model["roi_head"]["bbox_head"])


def set_num_classes(model: MutableMapping, num_classes: int) -> None:
    """Every head that predicts classes gets the dataset's class count: box, mask, mask-IoU, point and global
    context heads, distillation teachers; MaskFormer-style heads get `num_classes` things and no stuff
    classes (instance segmentation). Semantic-segmentation branches are removed (`drop_semantic_branch`)."""
    for path, node in list(walk_dicts(model)):
        if "num_classes" in node and isinstance(node.get("num_classes"), int) and not (
                path and path[-1] in SEMANTIC_KEYS):
            node["num_classes"] = num_classes
        weights = node.get("class_weight")
        if isinstance(weights, list) and len(weights) > 1 and len(weights) != num_classes + 1:
            node["class_weight"] = resized_class_weight(weights, num_classes, path)
        if "num_things_classes" in node:
            node["num_things_classes"] = num_classes
            node["num_stuff_classes"] = 0
        if path and path[-1] == "test_cfg" and "panoptic_on" in node:
            node.update(panoptic_on=False, semantic_on=False, instance_on=True)


def resized_class_weight(weights: list, num_classes: int, path: tuple) -> list:
    """A softmax loss's per-class weights (C + 1, no-object last: DETR, MaskFormer's `[1.0] * 133 + [0.1]`) for
    another class count: the classes' common weight, then the no-object weight. Refused when the classes'
    weights differ (they belong to the config's own classes)."""
    if len(set(weights[:-1])) != 1:
        raise UserError(f"{'.'.join(map(str, path))}.class_weight weighs the config's {len(weights) - 1} classes "
                        f"differently; it cannot be carried over to {num_classes} classes: set it for them")
    return [weights[0]] * num_classes + [weights[-1]]


def drop_semantic_branch(model: MutableMapping) -> list[str]:
    """Remove HTC's and SCNet's semantic-segmentation branch (it trains on COCO-stuff maps that LVIS/COCO instance
    annotations do not have); returns what was removed, to be said to the user."""
    removed = []
    for path, node in list(walk_dicts(model)):
        for key in SEMANTIC_KEYS:
            if isinstance(node.get(key), Mapping):
                node[key] = None
                removed.append(".".join(map(str, (*path, key))))
    return removed


def _overrides(loss: Mapping, base: str) -> dict:
    """The user's focal/varifocal weighting (loss.focal / loss.varifocal), for the sites with that weighting."""
    block = {"FocalLoss": "focal", "VarifocalLoss": "varifocal"}.get(base)
    return {k: float(v) for k, v in dict(loss.get(block) or {}).items() if v is not None} if block else {}


def ecm_loss_config(site: Site, old: Mapping, loss: Mapping, weights_file: str | None) -> dict:
    """The site's ECM loss: the site's own loss arguments, the ECM type and its weights file."""
    if not weights_file:
        need = "with background" if site.background else "foreground-only"
        raise UserError(f"loss=ecm needs a {need} weights file for {site.head_type} ({site.where}); run "
                        "`ecmctl calibrate` or pass weights_file=PATH")
    scale = float(loss.get("loss_weight", 1.0))
    if site.form == "ECMLoss":  # the paper's RoI form: no softmax arguments carry over
        new = dict(type="ECMLoss", loss_weight=float(old.get("loss_weight", 1.0)) * scale)
    else:
        new = {k: v for k, v in old.items() if k != "type"}
        new.update(type=site.form, loss_weight=float(old.get("loss_weight", 1.0)) * scale)
        new.update(_overrides(loss, str(old.get("type"))))
    new["weights_file"] = str(weights_file)
    return new


def valid_losses(site: Site) -> list[str]:
    """The loss choices a classification site can take: ecm and bce everywhere, the RoI-only losses on RoI box
    heads, EFL where the site's own loss is a sigmoid focal loss."""
    valid = ["ecm", "bce"]
    if site.roi:
        valid += [*ROI_ONLY, *ROI_BASELINES]
    if site.base_loss in ("FocalLoss", *FOCAL_BASELINES.values()):
        valid += list(FOCAL_BASELINES)
    return valid


def check_loss(placement: Placement, loss_type: str) -> None:
    """Refuse, in one line, a loss some classification site of the model cannot take (`plan_run` calls it with
    the planned placement, before anything is written)."""
    for site in placement.sites:
        if loss_type != NATIVE and loss_type not in (valid := valid_losses(site)):
            raise UserError(f"loss {loss_type!r} is not defined for the head {site.head_type} ({site.where}), which "
                            f"classifies with {site.base_loss}; valid there: {', '.join(valid)}")


def long_tail_loss_config(site: Site, old: Mapping, loss: Mapping, num_classes: int,
                          counts_file: str | None) -> dict:
    """eqlv2 / eql / fed on RoI box heads, efl on sigmoid focal-loss heads (ecmctl/losses/), with loss.<type>'s
    hyperparameters; eql and fed read the class frequencies from `counts_file`."""
    kind, lw = loss["type"], float(loss.get("loss_weight", 1.0))
    check_loss(Placement((site,)), kind)
    if kind in NEEDS_COUNTS and not counts_file:
        raise UserError(f"loss={kind} needs the dataset's class counts for {site.head_type} ({site.where}): pass "
                        "counts_file (`ecmctl train` passes the run's inputs/counts.json)")
    block = dict(loss.get(kind) or {})
    if kind == "eqlv2":
        return dict(type=ROI_BASELINES[kind], num_classes=num_classes, gamma=float(block.get("gamma", 12.0)),
                    mu=float(block.get("mu", 0.8)), alpha=float(block.get("alpha", 4.0)), loss_weight=lw)
    if kind == "eql":
        return dict(type=ROI_BASELINES[kind], counts_file=str(counts_file),
                    lambda_=float(block.get("lambda_", 1.76e-3)), loss_weight=lw)
    if kind == "fed":
        new = dict(type=ROI_BASELINES[kind], counts_file=str(counts_file),
                   num_sampled_classes=int(block.get("num_sampled_classes", 50)),
                   freq_weight_power=float(block.get("freq_weight_power", 0.5)), loss_weight=lw)
        if block.get("seed") is not None:
            new["seed"] = int(block["seed"])
        return new
    if old.get("activated"):  # efl: the site's focal loss, with per-class focusing
        raise UserError(f"loss 'efl' is not defined for the head {site.head_type} ({site.where}): its focal loss "
                        "takes probabilities (activated=True), EFL takes logits")
    focal = {"gamma": old.get("gamma", 2.0), "alpha": old.get("alpha", 0.25), **_overrides(loss, "FocalLoss")}
    return dict(type=FOCAL_BASELINES[kind], use_sigmoid=True, num_classes=num_classes, gamma=float(focal["gamma"]),
                alpha=float(focal["alpha"]), scale_factor=float(block.get("scale", 8.0)),
                loss_weight=float(old.get("loss_weight", 1.0)) * lw)


def baseline_loss_config(site: Site, old: Mapping, loss: Mapping, num_classes: int,
                         counts_file: str | None = None) -> dict:
    """bce / ce / seesaw: on RoI box heads the sigmoid or softmax classifier or Seesaw; elsewhere bce keeps the
    detector's own classification loss (with loss.focal / loss.varifocal where given). eqlv2 / eql / fed / efl:
    `long_tail_loss_config`."""
    kind, lw = loss["type"], float(loss.get("loss_weight", 1.0))
    if kind in ROI_BASELINES or kind in FOCAL_BASELINES:
        return long_tail_loss_config(site, old, loss, num_classes, counts_file)
    if site.roi:
        if kind == "bce":
            return dict(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=lw)
        if kind == "ce":
            return dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=lw)
        if kind == "seesaw":
            return dict(type="SeesawLoss", p=float(loss.get("p", 0.8)), q=float(loss.get("q", 2.0)),
                        num_classes=num_classes, loss_weight=lw)
    elif kind == "bce":
        return {**old, **_overrides(loss, str(old.get("type"))),
                "loss_weight": float(old.get("loss_weight", 1.0)) * lw}
    elif kind in ROI_ONLY:
        raise UserError(f"loss {kind!r} is not defined for the head {site.head_type} ({site.where}); valid there: "
                        f"{', '.join(valid_losses(site))}")
    raise UserError(f"unknown loss type {kind!r}; valid: "
                    + ", ".join(["ecm", "bce", *ROI_ONLY, *ROI_BASELINES, *FOCAL_BASELINES]))


def weights_for_sites(placement: Placement, weights_files: Sequence[str | None] | str | None) -> dict[Site, str]:
    """Which weights file each site reads: the background files in site order (one per background site), then
    the foreground-only one. One path given: every site reads it (a single site, or a test)."""
    if weights_files is None or isinstance(weights_files, str):
        return {s: weights_files for s in placement.sites}
    files = list(weights_files)
    bg, fg = placement.bg_sites, placement.fg_sites
    want = len(bg) + (1 if fg else 0)
    if len(files) != want:
        raise UserError(f"{len(files)} weights files for {len(bg)} background stage(s)"
                        + (" and the foreground-only heads" if fg and bg else "")
                        + f" of this detector; give {want}")
    out = dict(zip(bg, files))
    out.update({s: files[-1] for s in fg})
    return out


def apply_loss(model: MutableMapping, loss: Mapping, num_classes: int,
               weights_files: Sequence[str | None] | str | None = None, counts_file: str | None = None) -> Placement:
    """Replace the classification loss of every site; set every class count. Returns the placement.

    `weights_files`: one path, or one per background site followed by the foreground-only one (when the model
    has foreground-only sites too). `counts_file`: the dataset's counts, for the losses that read class
    frequencies (eql, fed). Unsupported heads raise rather than silently keeping their old loss.
    """
    placement = plan_placement(model)
    set_num_classes(model, num_classes)
    ecm = loss["type"] == "ecm"
    files = weights_for_sites(placement, weights_files) if ecm else {}
    for site in placement.sites:
        head = node_at(model, site.path)
        old = dict(head[site.loss_key])
        if loss["type"] == NATIVE:
            pass  # the config's own classification loss (calibration runs)
        elif ecm:
            head[site.loss_key] = ecm_loss_config(site, old, loss, files[site])
        else:
            head[site.loss_key] = baseline_loss_config(site, old, loss, num_classes, counts_file)
        if head["type"] == "SABLHead":  # scores with softmax whatever its loss: the subclass asks the loss
            head["type"] = ECM_HEAD_TYPES["SABLHead"]
    if ecm and any(s.form == "ECMNoObjectLoss" for s in placement.sites):
        _score_no_object(model, placement)
    return placement


def _score_no_object(model: MutableMapping, placement: Placement) -> None:
    """No-object heads, their panoptic fusion head and their matchers' classification cost become the ECM
    subclasses that score with σ(s_c)·(1 − σ(s_bg)) (engine/ecm_heads.py)."""
    for site in placement.sites:
        if site.form != "ECMNoObjectLoss":
            continue
        head = node_at(model, site.path)
        if head["type"] not in ECM_HEAD_TYPES and head["type"] not in ECM_HEAD_TYPES.values():
            raise UserError(f"{head['type']} ({site.where}) scores its softmax classes in code that has no ECM "
                            f"version in ecmctl (those that have: {', '.join(sorted(ECM_HEAD_TYPES)[:5])}...)")
        head["type"] = ECM_HEAD_TYPES.get(head["type"], head["type"])
    for path, node in walk_dicts(model):
        if path and path[-1] == "panoptic_fusion_head" and node.get("type") in ECM_HEAD_TYPES:
            node["type"] = ECM_HEAD_TYPES[node["type"]]
        if node.get("type") in ECM_COST_TYPES and "train_cfg" in path:
            node["type"] = ECM_COST_TYPES[node["type"]]


def apply_normed_head(model: Mapping, temperature: float = 20.0) -> None:
    """The paper's two-stage recipe: cosine classifier (NormedLinear) and NormedConv2d mask predictor."""
    if model.get("roi_head") is None:
        raise UserError("detector.normed_head applies to RoI heads only (two-stage and Cascade detectors)")
    for head in roi_bbox_heads(model):
        head["cls_predictor_cfg"] = dict(type="NormedLinear", tempearture=temperature)  # mmdet's spelling
    for head in _as_list(model["roi_head"].get("mask_head") or []):
        head["predictor_cfg"] = dict(type="NormedConv2d", tempearture=temperature)


def model_has_masks(model: Mapping) -> bool:
    """Whether the model predicts instance masks: a mask or MaskFormer-style head, or a mask loss anywhere."""
    for path, node in walk_dicts(model):
        if path and path[-1] in ("mask_head", "panoptic_head"):
            return True
        if any(isinstance(k, str) and k.startswith("loss_mask") for k in node):
            return True
    return False
