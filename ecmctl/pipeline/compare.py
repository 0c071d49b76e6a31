"""`ecmctl compare`: honest tables over seeds. Runs are grouped by what differs in their configs, paired by
seed, and each group is compared with a baseline group: mean ± sd per group, and the paired difference with its
t-interval and per-seed values (the math lives in `ecmctl.pipeline.seeds`; this module is the one place that
groups, pairs and lays out the tables; `ecmctl demo` and `ecmctl report` use it).

Inputs: run directories, sweep directories (their sweep.json lists the runs) and demo directories (demo.json).
Each run's metrics come from its metrics.json and its configuration from its resolved config.yaml.

How groups are chosen: every config key (flattened, `loss.name`, `schedule.lr`, …) whose value differs between
the runs, except keys that differ from run to run without being an experimental condition (NATURAL_KEYS: the
seed, names, paths, display settings, the evaluation settings that metrics.json records itself). Of those, the
group-name keys come first (`loss.name`, `detector.name`, …), and a key is kept only when it splits the runs
further than the keys before it (so `loss.type`, which follows from `loss.name`, does not lengthen labels).
`by=KEY` forces the grouping key. Groups are sorted by their values; the baseline is the first unless chosen.

Runs are only compared when their numbers are comparable: the same ground truth (metrics.json's gt_sha256), the
same evaluation protocol, and the same checkpoint iteration for runs of the same schedule length; otherwise
one line names the runs.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ecmctl.core.config import GROUPS
from ecmctl.core.errors import UserError
from ecmctl.core.io import atomic_write_json, check_output, load_schema
from ecmctl.core.metrics_identity import METRICS_JSON, check_own_metrics
from ecmctl.core.runs import HYDRA_CONFIG, RUN_JSON
from ecmctl.core.schemas import COMPARE_SCHEMA, DEMO_SCHEMA, GROUP_KEYS, METRICS_SCHEMA, SWEEP_SCHEMA
from ecmctl.pipeline import seeds as stats

SWEEP_JSON = "sweep.json"
DEMO_JSON = "demo.json"
# the metrics compared, in table order, and the metrics.json sections they are read from (those present)
METRICS: tuple[str, ...] = GROUP_KEYS
SECTIONS: tuple[str, ...] = ("bbox", "bbox_fixed", "bbox_pooled", "segm", "segm_fixed", "segm_pooled")
PAIR_KEY = "seed"
# config keys (and key prefixes) that differ between runs without being what is compared: the seed pairs runs;
# names, paths and display settings do not change results; eval.* is checked from metrics.json's own record
NATURAL_KEYS = ("seed", "name", "run_dir", "run_root", "data_root", "device", "counts_file", "weights_file",
                "dataset.root", "dataset.train_ann", "dataset.val_ann", "train.progress", "train.log_level",
                "train.eval_after", "tracking", "eval", "demo")
ABSENT = "(absent)"  # a key a run's config does not have (written by an older ecmctl)
FIGURE_TITLE = "AP by frequency group over seeds"
FIGURE_NOTE = "bars: mean over seeds; points: one per seed"


@dataclass
class CompareRun:
    """One evaluated run: where it is, its flattened config, its metrics and what identifies its evaluation."""

    path: Path
    config: dict
    metrics: dict

    @property
    def seed(self):
        return self.config.get(PAIR_KEY)

    @property
    def gt_sha256(self) -> str | None:
        return self.metrics.get("gt_sha256")

    @property
    def gt_file(self) -> str | None:
        return (self.metrics.get("protocol") or {}).get("ann_file") or self.metrics.get("gt")

    @property
    def protocol(self) -> dict | None:
        p = self.metrics.get("protocol")
        return {k: v for k, v in p.items() if k != "ann_file"} if isinstance(p, dict) else None

    @property
    def iteration(self) -> str | None:
        """'iter 600' / 'epoch 12' from the evaluated checkpoint's file name; None when it does not say."""
        m = re.search(r"(iter|epoch)_(\d+)", Path(str(self.metrics.get("checkpoint") or "")).name)
        return f"{m.group(1)} {int(m.group(2))}" if m else None


# ----------------------------------------------------------------------------------------------- loading


def expand_dirs(paths: list[str | Path]) -> list[Path]:
    """Run directories, in order and once each: run directories as given, sweep and demo directories expanded
    to their runs. A directory that is none of these, or a sweep job without a run, is an error naming them."""
    out: list[Path] = []
    bad: list[str] = []
    no_run: list[str] = []
    for p in map(Path, paths):
        if (p / RUN_JSON).is_file():
            out.append(p)
        elif (p / SWEEP_JSON).is_file():
            doc = load_schema(p / SWEEP_JSON, SWEEP_SCHEMA)
            for i, job in enumerate(doc.get("jobs") or []):
                if job.get("run_dir"):
                    out.append(Path(job["run_dir"]))
                else:
                    no_run.append(f"{p} job {i} ({' '.join(job.get('overrides') or [])}: {job.get('status')})")
        elif (p / DEMO_JSON).is_file():
            doc = load_schema(p / DEMO_JSON, DEMO_SCHEMA)
            out += [Path(r) for runs in (doc.get("runs") or {}).values() for r in runs]
        elif not p.exists():
            bad.append(f"{p} (no such directory)")
        else:
            bad.append(f"{p} (no {RUN_JSON}, {SWEEP_JSON} or {DEMO_JSON})")
    if bad:
        raise UserError("not a run, sweep or demo directory: " + ", ".join(bad))
    if no_run:
        raise UserError("sweep jobs without a run directory, so without metrics: " + ", ".join(no_run)
                        + "; leave the sweep out and pass the runs that finished")
    seen: set[Path] = set()
    unique = []
    for p in out:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    if not unique:
        raise UserError("no runs to compare: " + ", ".join(map(str, paths)))
    return unique


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """{'loss.name': 'ecm', 'schedule.milestones': [0.75, 0.92], …} of a nested config."""
    if not isinstance(node, dict) or not node:
        return {prefix.rstrip("."): node} if prefix else {}
    out: dict[str, Any] = {}
    for k, v in node.items():
        out.update(flatten(v, f"{prefix}{k}."))
    return out


def load_runs(dirs: list[Path]) -> list[CompareRun]:
    """Every run's metrics.json and config.yaml; runs without them are named together in one error."""
    import yaml

    missing = [d for d in dirs if not (d / RUN_JSON).is_file()]
    if missing:
        raise UserError("not a run directory (no run.json): " + ", ".join(map(str, missing)))
    no_metrics = [d for d in dirs if not (d / METRICS_JSON).is_file()]
    if no_metrics:
        raise UserError(f"no {METRICS_JSON} in {len(no_metrics)} of {len(dirs)} runs: "
                        + ", ".join(map(str, no_metrics)) + "; evaluate them first (`ecmctl eval RUN`)")
    no_config = [d for d in dirs if not (d / HYDRA_CONFIG).is_file()]
    if no_config:
        raise UserError(f"no {HYDRA_CONFIG} (the run's resolved config) in: " + ", ".join(map(str, no_config)))
    runs = []
    for d in dirs:
        metrics = check_own_metrics(d, load_schema(d / METRICS_JSON, METRICS_SCHEMA), d / METRICS_JSON)
        try:
            config = yaml.safe_load((d / HYDRA_CONFIG).read_text())
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise UserError(f"{d / HYDRA_CONFIG}: not a readable config ({str(e).splitlines()[0]})") from None
        if not isinstance(config, dict):
            raise UserError(f"{d / HYDRA_CONFIG}: not a config (a mapping of keys)")
        config = json.loads(json.dumps(config, default=str))  # plain JSON values (a YAML date becomes its text)
        run = CompareRun(path=d, config=flatten(config), metrics=metrics)
        if run.seed is None:
            raise UserError(f"{d / HYDRA_CONFIG}: no 'seed'; runs are paired by seed")
        runs.append(run)
    return runs


# ----------------------------------------------------------------------------------------------- grouping


def fmt_value(v: Any) -> str:
    """A config value as in an override: null, true, 0.04, ecm, [0.75, 0.92]."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (str, int, float)):
        return str(v)
    return json.dumps(v, sort_keys=True)


def _sort_key(v: Any) -> tuple:
    if v == ABSENT or v is None:
        return (0, "")
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return (1, float(v), "")
    return (2, 0.0, fmt_value(v))


def _natural(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in NATURAL_KEYS)


def differing_keys(runs: list[CompareRun], include_natural: bool = False) -> list[str]:
    """Config keys whose value is not the same in every run (NATURAL_KEYS left out unless asked)."""
    keys = sorted({k for r in runs for k in r.config})
    return [k for k in keys if (include_natural or not _natural(k))
            and len({fmt_value(r.config.get(k, ABSENT)) for r in runs}) > 1]


def short_key(key: str) -> str:
    """'loss' for 'loss.name' (a config group's option, as on the command line), else the key."""
    head, _, tail = key.partition(".")
    return head if tail == "name" and head in GROUPS else key


def _partition(runs: list[CompareRun], keys: list[str]) -> set[tuple]:
    return {tuple(fmt_value(r.config.get(k, ABSENT)) for k in keys) for r in runs}


def grouping_keys(runs: list[CompareRun]) -> list[str]:
    """The differing keys that label the groups: group names first, then shallow keys; a key is kept only
    when it splits the runs further than the keys kept before it (the groups are those of all differing keys)."""
    keys = sorted(differing_keys(runs), key=lambda k: (short_key(k) == k, k.count("."), k))
    chosen: list[str] = []
    for k in keys:
        if len(_partition(runs, [*chosen, k])) > len(_partition(runs, chosen)):
            chosen.append(k)
    return chosen


def resolve_key(key: str, runs: list[CompareRun], option: str = "--by") -> str:
    """A config key as given (`loss.name`), or a config group's name (`loss` -> `loss.name`)."""
    key = key.strip()
    if key == PAIR_KEY:
        raise UserError(f"{option} {key}: runs are paired by seed, so the seed cannot group them; choose one of the "
                        f"keys that differ between them: {', '.join(differing_keys(runs)) or 'none'}")
    if any(key in r.config for r in runs):
        return key
    if any(f"{key}.name" in r.config for r in runs):
        return f"{key}.name"
    raise UserError(f"{option} {key}: no such config key in these runs; keys that differ between them: "
                    f"{', '.join(differing_keys(runs)) or 'none (the runs differ only by seed)'}")


@dataclass
class Group:
    label: str  # 'loss=ecm' (a key per grouping key, as on the command line)
    name: str  # the value alone when one key groups the runs, else the label
    values: dict  # {grouping key: value}
    runs: list[CompareRun]


def group_runs(runs: list[CompareRun], by: str | None = None) -> tuple[list[str], list[Group]]:
    """(the grouping keys, the groups sorted by their values); each group's runs sorted by seed, and a seed
    at most once per group."""
    keys = [resolve_key(by, runs)] if by else grouping_keys(runs)
    buckets: dict[tuple, list[CompareRun]] = {}
    for r in runs:
        buckets.setdefault(tuple(fmt_value(r.config.get(k, ABSENT)) for k in keys), []).append(r)
    groups = []
    for members in buckets.values():
        values = {k: members[0].config.get(k, ABSENT) for k in keys}
        label = ", ".join(f"{short_key(k)}={fmt_value(v)}" for k, v in values.items()) or "all runs"
        name = fmt_value(next(iter(values.values()))) if len(keys) == 1 else label
        members = sorted(members, key=lambda r: _sort_key(r.seed))
        seen: dict[str, CompareRun] = {}
        for r in members:
            s = fmt_value(r.seed)
            if s in seen:
                others = [str(x.path) for x in members if fmt_value(x.seed) == s]
                hint = (f"differ in {', '.join(differing_keys(members))}: group by one of them with --by"
                        if differing_keys(members) else "are the same config: pass only one of them")
                raise UserError(f"{label}: {len(others)} runs with seed {s} ({', '.join(others)}); they {hint}")
            seen[s] = r
        groups.append(Group(label=label, name=name, values=values, runs=members))
    groups.sort(key=lambda g: tuple(_sort_key(g.values[k]) for k in keys))
    return keys, groups


def choose_baseline(groups: list[Group], keys: list[str], spec: str | None) -> tuple[Group, str]:
    """The baseline group and how it was chosen: `spec` 'KEY=VALUE[,KEY=VALUE]' (a group key or its config
    group's name: `loss=bce`, `loss.name=bce`), else the first group in sorted order."""
    if not spec:
        return groups[0], "the first group in sorted order; choose another with --baseline KEY=VALUE"
    choices = "; ".join(g.label for g in groups)
    wanted: dict[str, str] = {}
    for part in spec.split(","):
        key, eq, value = part.partition("=")
        if not eq:
            raise UserError(f"--baseline {spec}: give KEY=VALUE, one of: {choices}")
        k = key.strip()
        k = k if k in keys else (f"{k}.name" if f"{k}.name" in keys else k)
        if k not in keys:
            raise UserError(f"--baseline {spec}: the groups differ in {', '.join(keys) or 'nothing'}, not {key.strip()}"
                            f"; choose one of: {choices}")
        wanted[k] = value.strip()
    found = [g for g in groups if all(fmt_value(g.values[k]) == v for k, v in wanted.items())]
    if len(found) != 1:
        what = "matches no group" if not found else f"matches {len(found)} groups"
        raise UserError(f"--baseline {spec} {what}; choose one of: {choices}")
    return found[0], f"--baseline {spec}"


# ----------------------------------------------------------------------------------------------- checks


def _names(runs: list[CompareRun]) -> str:
    return ", ".join(str(r.path) for r in runs)


def _split(runs: list[CompareRun], what) -> dict[str, list[CompareRun]]:
    out: dict[str, list[CompareRun]] = {}
    for r in runs:
        out.setdefault(what(r), []).append(r)
    return out


def check_comparable(runs: list[CompareRun]) -> None:
    """Refuse, in one line naming the runs, runs evaluated on different (or unrecorded) ground truth, with
    different (or unrecorded) protocols, or at different checkpoint iterations of the same schedule length."""
    unknown = [r for r in runs if not r.gt_sha256]
    if unknown:
        raise UserError("cannot tell which ground truth these runs were evaluated on (metrics.json has no "
                        f"gt_sha256: evaluated by an older ecmctl): {_names(unknown)}; re-score them with "
                        "`ecmctl eval RUN --reuse-detections` (or evaluate again) before comparing")
    by_gt = _split(runs, lambda r: r.gt_sha256)
    if len(by_gt) > 1:
        raise UserError("runs evaluated on different ground truth cannot be paired: " + " vs ".join(
            f"{_names(rs)} ({rs[0].gt_file or '?'}, sha256 {sha[:12]})" for sha, rs in by_gt.items()))
    unknown = [r for r in runs if r.protocol is None]
    if unknown:
        raise UserError(f"metrics.json records no evaluation protocol for: {_names(unknown)}; evaluate them again")
    by_protocol = _split(runs, lambda r: json.dumps(r.protocol, sort_keys=True))
    if len(by_protocol) > 1:
        keys = sorted({k for r in runs for k in r.protocol})
        differ = [k for k in keys if len({fmt_value(r.protocol.get(k)) for r in runs}) > 1]
        raise UserError("runs evaluated with different protocols cannot be paired: " + " vs ".join(
            f"{_names(rs)} ({', '.join(f'{k}={fmt_value(rs[0].protocol.get(k))}' for k in differ)})"
            for rs in by_protocol.values()) + "; re-score them alike (`ecmctl eval RUN --reuse-detections --set "
            "eval.protocol=…`)")
    unknown = [r for r in runs if r.iteration is None]
    if unknown:
        raise UserError(f"cannot tell the checkpoint iteration of: {_names(unknown)} (metrics.json's checkpoint "
                        "is not iter_N.pth / epoch_N.pth)")
    length = ("train.max_iters", "train.max_epochs")
    for same_schedule in _split(runs, lambda r: fmt_value([r.config.get(k) for k in length])).values():
        by_iter = _split(same_schedule, lambda r: r.iteration)
        if len(by_iter) > 1:
            raise UserError("runs of the same schedule evaluated at different checkpoint iterations cannot be "
                            "paired: " + " vs ".join(f"{_names(rs)} ({it})" for it, rs in by_iter.items())
                            + "; evaluate each at the same checkpoint (`ecmctl eval RUN --checkpoint RUN/iter_N.pth`)")


# ----------------------------------------------------------------------------------------------- statistics


def seed_statistics(values: dict[str, list[dict | None]], baseline: str, keys: tuple[str, ...] = METRICS,
                    sections: tuple[str, ...] = SECTIONS) -> dict:
    """{section: {metric: {"groups": {group: seeds.summarize}, "diffs": {group: paired difference against the
    baseline, seeds.compare's "diff"}}}} from each group's metrics.json documents, one per seed in the same seed
    order for every group (None: the group has no run of that seed). A section or metric no run reports is
    left out."""
    out: dict = {}
    for iou in sections:
        for key in keys:
            per = {g: [None if d is None else stats.metric_value(d, iou, key) for d in docs]
                   for g, docs in values.items()}
            if all(v is None for vs in per.values() for v in vs):
                continue
            out.setdefault(iou, {})[key] = {
                "groups": {g: stats.summarize(v) for g, v in per.items()},
                "diffs": {g: stats.compare(per[baseline], v)["diff"] for g, v in per.items() if g != baseline}}
    return out


def comparison(values: dict[str, list[dict | None]], seeds: list, baseline: str, keys: tuple[str, ...] = METRICS,
               names: dict[str, str] | None = None, group_keys: list[str] = (), group_values: dict | None = None,
               baseline_source: str = "") -> dict:
    """The comparison document (compare.json without its runs) from metrics.json documents per group, each list
    in the order of `seeds` (None where a group has no run of that seed); groups in the order of `values`."""
    if baseline not in values:
        raise UserError(f"baseline {baseline!r} is not a group; choose one of: {', '.join(values)}")
    names = names or {}
    groups = [{"label": g, "name": names.get(g, g), "values": (group_values or {}).get(g, {}),
               "seeds": [s for s, d in zip(seeds, docs, strict=True) if d is not None]}
              for g, docs in values.items()]
    notes = []
    if len(groups) == 1:
        notes.append(f"one group ({baseline}): nothing to compare it with; means only")
    if max(len(g["seeds"]) for g in groups) < 2:
        notes.append("one seed per group: means and single differences only, no sd and no interval (a paired "
                     "t-interval needs at least 2 seeds)")
    base_seeds = set(map(fmt_value, groups[[g["label"] for g in groups].index(baseline)]["seeds"]))
    for g in groups:
        lacking = [fmt_value(s) for s in seeds if fmt_value(s) not in set(map(fmt_value, g["seeds"]))]
        if lacking:
            notes.append(f"{g['label']} has no run with seed {', '.join(lacking)}"
                         + ("" if g["label"] == baseline else ": its differences use the seeds it shares with "
                            f"the baseline ({len(base_seeds & set(map(fmt_value, g['seeds'])))})"))
    return {"schema": COMPARE_SCHEMA, "group_keys": list(group_keys), "groups": groups, "baseline": baseline,
            "baseline_source": baseline_source, "seeds": list(seeds), "metrics": list(keys),
            "interval": stats.INTERVAL, "level": stats.LEVEL,
            "sections": seed_statistics(values, baseline, keys), "notes": notes}


def check_outputs(out: str | Path) -> Path:
    """Before any work: `out` may be written (a new file or an earlier compare.json) and so may the figure
    beside it (same name, .png); returns the figure's path."""
    out = Path(out)
    if out.suffix.lower() == ".png":
        raise UserError(f"-o {out}: the comparison is JSON (the figure is written beside it as .png); "
                        "pass a .json path")
    check_output(out, schema=COMPARE_SCHEMA)
    return check_output(out.with_suffix(".png"), marker=b"\x89PNG", kind="PNG figure")


def compare_runs(paths: list[str | Path], by: str | None = None, baseline: str | None = None,
                 out: str | Path | None = None) -> dict:
    """`ecmctl compare`: load, group, check and compare the runs; with `out`, write the document there as JSON
    and the AP-by-group figure beside it (same name, .png). Returns the document, with "json" and "figure"
    set to the files written."""
    figure = check_outputs(out) if out is not None else None
    runs = load_runs(expand_dirs(paths))
    keys, groups = group_runs(runs, by)
    base, source = choose_baseline(groups, keys, baseline)
    check_comparable(runs)
    seeds = sorted({fmt_value(r.seed): r.seed for r in runs}.values(), key=_sort_key)
    values, paths_by_group = {}, {}
    for g in groups:
        by_seed = {fmt_value(r.seed): r for r in g.runs}
        aligned = [by_seed.get(fmt_value(s)) for s in seeds]
        values[g.label] = [r.metrics if r is not None else None for r in aligned]
        paths_by_group[g.label] = [str(r.path) if r is not None else None for r in aligned]
    doc = comparison(values, seeds, base.label, names={g.label: g.name for g in groups}, group_keys=keys,
                     group_values={g.label: g.values for g in groups}, baseline_source=source)
    for g in doc["groups"]:
        g["runs"] = paths_by_group[g["label"]]
    doc["by"] = by
    within = sorted({k for g in groups for k in differing_keys(g.runs)})  # what varies inside a group
    if within:
        doc["notes"].append(f"runs of a group also differ in {', '.join(within)}, which --by {by} does not "
                            "separate")
    doc["runs"] = [{"path": str(r.path), "group": g.label, "seed": r.seed, "checkpoint": r.metrics.get("checkpoint"),
                    "iteration": r.iteration, "gt_file": r.gt_file, "gt_sha256": r.gt_sha256}
                   for g in groups for r in g.runs]
    doc["protocol"] = runs[0].protocol
    if out is not None:
        out = Path(out)
        atomic_write_json(out, doc)
        write_figure(doc, figure)
        doc["json"], doc["figure"] = str(out), str(figure)
    return doc


def for_report(run_dirs: list[str | Path]) -> tuple[dict | None, str | None]:
    """What `ecmctl report` shows over seeds: (the comparison, None) when some configuration was run with
    several seeds; (None, why not) when such runs cannot be compared; (None, None) when there is nothing over
    seeds to show (one run per configuration, or runs without a config.yaml)."""
    dirs = [Path(d) for d in run_dirs]
    if not all((d / HYDRA_CONFIG).is_file() and (d / METRICS_JSON).is_file() for d in dirs):
        return None, None
    try:
        runs = load_runs(dirs)
        keys, groups = group_runs(runs)
        if max(len(g.runs) for g in groups) < 2:
            return None, None
        return compare_runs(dirs), None
    except UserError as e:
        return None, f"no statistics over seeds: {e}"


# ----------------------------------------------------------------------------------------------- figure


def figure_series(doc: dict) -> list[dict]:
    """The comparison as series for figures.ap_by_group_figure: one per group, its per-seed values."""
    series = []
    for i, g in enumerate(doc["groups"]):
        values = {iou: {key: st["groups"][g["label"]]["values"] for key, st in rows.items()}
                  for iou, rows in doc["sections"].items()}
        series.append({"label": g["name"], "color": f"C{i % 10}", "values": values})
    return series


def write_figure(doc: dict, path: str | Path, software: str = "ecmctl compare") -> Path:
    """AP, APr, APc, APf per group (bars: mean over seeds, points: one per seed), as PNG."""
    from ecmctl.pipeline.figures import ap_by_group_figure, save_figure

    fig = ap_by_group_figure(figure_series(doc), FIGURE_TITLE)
    fig.supxlabel(f"{FIGURE_NOTE}; seeds {', '.join(map(fmt_value, doc['seeds']))}", fontsize=8, color="0.3")
    save_figure(fig, Path(path), software=software)
    return Path(path)


# ----------------------------------------------------------------------------------------------- tables


def fmt_mean_sd(summary: dict | None) -> str:
    """'59.3 ± 2.1' in %, '59.3' for one seed, '-' when undefined on every seed."""
    if not summary or summary.get("mean") is None:
        return "-"
    sd = summary.get("sd")
    return f"{100 * summary['mean']:.1f}" + ("" if sd is None else f" ± {100 * sd:.1f}")


def fmt_signed(v: float | None) -> str:
    """'+3.0' in % ('+0.0', never '-0.0'), '-' when undefined."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{round(100 * v, 1) + 0.0:+.1f}"


def fmt_diff(d: dict | None) -> str:
    """'+3.7 [-0.1, +7.5]': the mean paired difference and its interval (none for one seed)."""
    if not d or d.get("mean") is None:
        return "-"
    ci = "" if not d.get("ci") else f" [{fmt_signed(d['ci'][0])}, {fmt_signed(d['ci'][1])}]"
    return fmt_signed(d["mean"]) + ci


def metric_label(iou: str, key: str) -> str:
    return f"{iou.replace('_', ' ')} {key}"  # 'bbox fixed AP': Fixed AP


def table(doc: dict, names: dict[str, str] | None = None) -> dict:
    """The comparison as a table of strings (AP in %), for the terminal and for Markdown:
    {"columns": [...], "rows": [[cells]], "ends": {row indices that end a block}, "caption"}.

    Two groups: one row per metric (metric | base | other | Δ other−base [95% CI] | Δ per seed). More groups
    (or one): one row per metric and group (metric | group | mean ± sd | Δ vs base [95% CI] | Δ per seed).
    Each group's own per-seed values are in the document (sections → groups → values)."""
    names = {g["label"]: (names or {}).get(g["label"], g["name"]) for g in doc["groups"]}
    base = doc["baseline"]
    others = [g["label"] for g in doc["groups"] if g["label"] != base]
    order = [base, *others]
    rows, ends = [], set()
    wide = len(order) == 2
    if wide:
        o = others[0]
        columns = ["metric", names[base], names[o], f"Δ {names[o]}−{names[base]} [95% CI]", "Δ per seed"]
    else:
        head = ", ".join(short_key(k) for k in doc.get("group_keys") or []) or "group"
        columns = ["metric", head, "mean ± sd", f"Δ vs {names[base]} [95% CI]", "Δ per seed"]
    for iou, st_rows in doc["sections"].items():
        for key in doc.get("metrics") or list(st_rows):
            st = st_rows.get(key)
            label = metric_label(iou, key)
            if wide:
                if st is None:  # no run reports it
                    rows.append([label, "-", "-", "-", "-"])
                    continue
                d = st["diffs"][o]
                rows.append([label, fmt_mean_sd(st["groups"][base]), fmt_mean_sd(st["groups"][o]), fmt_diff(d),
                             " ".join(fmt_signed(v) for v in d["values"])])
                continue
            for i, g in enumerate(order):
                first = label if i == 0 else ""
                if st is None:
                    rows.append([first, names[g], "-", "-", "-"])
                    continue
                s = st["groups"][g]
                if g == base:
                    rows.append([first, names[g], fmt_mean_sd(s), "(baseline)", ""])
                else:
                    d = st["diffs"][g]
                    rows.append([first, names[g], fmt_mean_sd(s), fmt_diff(d),
                                 " ".join(fmt_signed(v) for v in d["values"])])
            ends.add(len(rows) - 1)
    return {"columns": columns, "rows": rows, "ends": ends, "caption": caption(doc, names)}


def max_pairs(doc: dict) -> int:
    """The most seeds any paired difference uses (0 without a second group)."""
    return max((d["n"] for rows in doc["sections"].values() for st in rows.values()
                for d in st["diffs"].values()), default=0)


def caption(doc: dict, names: dict[str, str] | None = None) -> str:
    names = names or {g["label"]: g["name"] for g in doc["groups"]}
    n = max_pairs(doc)
    interval = f"its 95% t-interval (df = n − 1 = {n - 1})" if n >= 2 else "no interval (one seed)"
    base = names[doc["baseline"]]
    seeds = ", ".join(map(fmt_value, doc["seeds"]))
    groups = ", ".join(names[g["label"]] for g in doc["groups"])
    return (f"AP in %. {groups}: mean ± sd over seeds {seeds}. Δ: each − {base} paired by seed: its mean, "
            f"{interval} and each seed's Δ; '-': undefined (e.g. no class of the group in val).")


def markdown(doc: dict, names: dict[str, str] | None = None) -> list[str]:
    """The comparison's table as Markdown lines, its caption and notes below it."""
    t = table(doc, names)
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(map(esc, t["columns"])) + " |", "|---|" + "---:|" * (len(t["columns"]) - 1)]
    lines += ["| " + " | ".join(map(esc, row)) + " |" for row in t["rows"]]
    lines += ["", t["caption"], "", f"Baseline: {names_of(doc, names)[doc['baseline']]} ({doc['baseline_source']})."
              if doc.get("baseline_source") else f"Baseline: {names_of(doc, names)[doc['baseline']]}."]
    lines += [f"- {n}" for n in doc.get("notes") or []]
    return lines


def names_of(doc: dict, names: dict[str, str] | None = None) -> dict[str, str]:
    return {g["label"]: (names or {}).get(g["label"], g["name"]) for g in doc["groups"]}


# ----------------------------------------------------------------------------------------------- views


def by_name(doc: dict) -> dict:
    """The statistics keyed by group name (demo.json's "stats"): {section: {metric: {name: summary, …,
    "diffs": {name: difference against the baseline}, and with two groups "diff": the other's difference}}}."""
    names = names_of(doc)
    out: dict = {}
    for iou, rows in doc["sections"].items():
        for key, st in rows.items():
            entry = {names[g]: s for g, s in st["groups"].items()}
            entry["diffs"] = {names[g]: d for g, d in st["diffs"].items()}
            if len(st["diffs"]) == 1:
                entry["diff"] = next(iter(st["diffs"].values()))
            out.setdefault(iou, {})[key] = entry
    return out


def means_by_name(doc: dict) -> dict:
    """{name: {section: {metric: mean over seeds}}} (undefined values left out; a metric undefined on every
    seed is absent)."""
    names = names_of(doc)
    out: dict = {names[g["label"]]: {} for g in doc["groups"]}
    for iou, rows in doc["sections"].items():
        for key, st in rows.items():
            for g, s in st["groups"].items():
                if s["mean"] is not None:
                    out[names[g]].setdefault(iou, {})[key] = s["mean"]
    return out


def summary_line(doc: dict) -> str:
    """One line: how many runs and groups, by what, paired by seed, against which baseline."""
    keys = ", ".join(doc.get("group_keys") or []) or "nothing (one group)"
    names = names_of(doc)
    return (f"{sum(len(g['seeds']) for g in doc['groups'])} runs in {len(doc['groups'])} group(s) by {keys}, "
            f"paired by seed ({', '.join(map(fmt_value, doc['seeds']))}); baseline {names[doc['baseline']]} "
            f"({doc.get('baseline_source') or 'given'})")

