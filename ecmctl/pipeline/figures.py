"""Figure helpers shared by `ecmctl report` and `ecmctl compare`: a headless figure, an atomic PNG save, and the
AP-by-frequency-group plot (one bar per run or group and section; a point per seed when there are several).

Matplotlib is used through `matplotlib.figure.Figure` only (no pyplot, no GUI backend, no global state):
headless by construction. Every file is written to a temp name in the output directory, then renamed.
"""

from __future__ import annotations

from pathlib import Path

from ecmctl.core.io import atomic_write
from ecmctl.core.schemas import GROUP_KEYS

DPI = 110
# metrics.json sections plotted by AP group, in panel order; the box panel is always drawn
AP_PANELS = (("bbox", "box"), ("bbox_fixed", "box Fixed"), ("segm", "mask"), ("segm_fixed", "mask Fixed"))


def suptitle(fig) -> str:
    getter = getattr(fig, "get_suptitle", None)  # matplotlib >= 3.8
    if getter is not None:
        return getter()
    return fig._suptitle.get_text() if fig._suptitle is not None else ""


def save_figure(fig, path: Path, software: str = "ecmctl report") -> str:
    """Save as PNG (the title also goes into the PNG's Title text chunk); returns the title read back."""
    title = suptitle(fig)
    atomic_write(path, binary=True, write=lambda f: fig.savefig(f, format="png", dpi=DPI,
                                              metadata={"Title": title, "Software": software}))
    return title


def new_figure(title: str, ncols: int = 1, width: float = 6.4, height: float = 4.4):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols if ncols > 1 else width, height), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    fig.suptitle(title)
    return fig, list(axes)


def ap_by_group_figure(series: list[dict], title: str, keys: tuple[str, ...] = GROUP_KEYS):
    """Grouped bars of AP, APr, APc, APf (in %): one bar per series (a run, or a group of runs over seeds) in
    each panel (box, and box Fixed / mask / mask Fixed when any series has them).

    series: [{"label", "color", "values": {section: {key: [value per seed, None = undefined]}}}]. The bar is
    the mean of the defined values (its number printed on it); with more than one defined value, each value is
    also drawn as a point on the bar (one per seed)."""
    import numpy as np

    panels = [(iou, label) for iou, label in AP_PANELS
              if iou == "bbox" or any(iou in (s.get("values") or {}) for s in series)]
    fig, axes = new_figure(title, ncols=len(panels), width=max(5.0, 3.0 + 0.5 * len(series)))
    x = np.arange(len(keys))
    width = 0.8 / max(1, len(series))
    for ax, (iou, label) in zip(axes, panels, strict=True):
        top = 0.0
        for i, s in enumerate(series):
            per_key = [[100 * v for v in ((s.get("values") or {}).get(iou) or {}).get(k) or [] if v is not None]
                       for k in keys]
            h = np.array([float(np.mean(v)) if v else np.nan for v in per_key])
            pos = x - 0.4 + width * (i + 0.5)
            ax.bar(pos, np.nan_to_num(h), width * 0.95, color=s["color"], label=s["label"])
            for p, v in zip(pos, h, strict=True):
                ax.text(p, (0 if np.isnan(v) else v), "n/a" if np.isnan(v) else f"{v:.1f}",
                        ha="center", va="bottom", fontsize=7, rotation=90 if len(series) > 3 else 0)
            for p, vals in zip(pos, per_key, strict=True):
                if len(vals) > 1:
                    ax.scatter([p] * len(vals), vals, s=12, color="black", zorder=3, linewidths=0)
            points = [v for vals in per_key for v in vals]
            if points:
                top = max(top, max(points))
        ax.set_xticks(x, list(keys))
        ax.set_ylim(0, max(top * 1.2, 1.0))
        ax.set_ylabel(f"{label} AP (%)")
        ax.set_title(f"{label} ({iou})")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    return fig
