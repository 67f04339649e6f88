"""The report's plots: matplotlib figures (Agg, no pyplot state) rendered to PNG bytes."""
from __future__ import annotations

import io

import numpy as np

GREEN, RED, GREY = "#2e7d32", "#c62828", "#9e9e9e"


def png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def hist_png(edges, counts, threshold: float, title: str, empty: str, layers=None,
             xlabel: str = "ITM match probability") -> bytes:
    from matplotlib.figure import Figure as MplFigure
    from matplotlib.ticker import MaxNLocator

    fig = MplFigure(figsize=(6, 3.2), layout="constrained")
    ax = fig.add_subplot()
    if layers:  # [(label, counts, colour)], overlaid
        for label, c, colour in layers:
            ax.stairs(c, edges, label=f"{label} ({int(c.sum())})", color=colour, fill=True, alpha=0.45)
        ax.legend(loc="upper left", fontsize=8, framealpha=0.9)
    elif counts.sum():
        left = edges[:-1]
        ax.bar(left, counts, width=np.diff(edges), align="edge",
               color=[GREEN if x >= threshold else RED for x in left], edgecolor="white", linewidth=0.4)
    if counts.sum():
        ax.set_ylim(0, counts.max() * 1.18)  # room for the threshold's label
    else:
        ax.text(0.5, 0.5, empty, ha="center", va="center", transform=ax.transAxes, color=GREY)
    ax.axvline(threshold, color="black", linestyle="--", linewidth=1.2)
    ax.text(threshold, 0.97, f" τ = {threshold:g}", transform=ax.get_xaxis_transform(), va="top", fontsize=9)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlim=(edges[0], edges[-1]), xlabel=xlabel, ylabel="texts", title=title)
    return png(fig)


def counts_png(bars: list[tuple[str, list[tuple[str, int, str]]]]) -> bytes:
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=(6, 0.6 + 0.55 * len(bars)), layout="constrained")
    ax = fig.add_subplot()
    for y, (label, parts) in enumerate(reversed(bars)):
        left = 0
        for name, n, colour in parts:
            if n:
                ax.barh(y, n, left=left, color=colour, label=name)
                ax.text(left + n / 2, y, str(n), ha="center", va="center", color="white", fontsize=8)
            left += n
    ax.set_yticks(range(len(bars)), [b[0] for b in reversed(bars)])
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    if unique:
        ax.legend(unique.values(), unique.keys(), loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3,
                  fontsize=8, frameon=False)
    ax.set_xlabel("count")
    return png(fig)


SCORER_COLOURS = ("#1565c0", "#ef6c00", "#6a1b9a", "#00838f")


def noise_png(rows: dict[str, list[dict]]) -> bytes:
    """Share of each noise type's web texts each scorer flags: {scorer: rows of pipeline/report_truth.py}."""
    from matplotlib.figure import Figure as MplFigure

    names = list(dict.fromkeys(r["noise"] for rs in rows.values() for r in rs))[::-1]
    height = 0.8 / max(1, len(rows))
    fig = MplFigure(figsize=(6, 0.8 + 0.45 * len(names) * max(1, len(rows)) ** 0.5), layout="constrained")
    ax = fig.add_subplot()
    for k, (scorer, rs) in enumerate(rows.items()):
        shares = {r["noise"]: r["flagged_share"] or 0.0 for r in rs}
        y = np.arange(len(names)) + ((len(rows) - 1) / 2 - k) * height
        ax.barh(y, [shares.get(n, 0.0) for n in names], height=height * 0.9,
                color=SCORER_COLOURS[k % len(SCORER_COLOURS)], label=scorer.upper())
    ax.set_yticks(np.arange(len(names)), [f"{n} (false alarms)" if n == "clean" else n for n in names])
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(rows), fontsize=8, frameon=False)
    ax.set(xlim=(0, 1), xlabel="share of web texts flagged (below the threshold)")
    return png(fig)


def calibration_png(curve: dict, threshold: float, target: float, truth: dict | None = None,
                    xlabel: str = "threshold") -> bytes:
    """Precision and recall of the calibration's labelled pairs against the threshold, the chosen
    one and the target marked; `truth`: {"precision", "recall"} of this run's texts at it."""
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=(6, 3.2), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(curve["threshold"], curve["precision"], color=SCORER_COLOURS[0], label="precision (labelled pairs)")
    ax.plot(curve["threshold"], curve["recall"], color=SCORER_COLOURS[1], label="recall (labelled pairs)")
    ax.axhline(target, color=GREY, linestyle=":", linewidth=1.2)
    ax.axvline(threshold, color="black", linestyle="--", linewidth=1.2)
    ax.text(threshold, 0.03, f" τ = {threshold:.3g}", transform=ax.get_xaxis_transform(), fontsize=9)
    if truth:
        for name, colour, marker in (("precision", SCORER_COLOURS[0], "o"), ("recall", SCORER_COLOURS[1], "s")):
            if truth.get(name) is not None:
                ax.plot([threshold], [truth[name]], marker=marker, color=colour, linestyle="none",
                        markeredgecolor="black", label=f"{name} of this run's web texts (truth)")
    ax.legend(loc="lower left", fontsize=7, framealpha=0.9)
    ax.set(ylim=(0, 1.02), xlabel=xlabel, ylabel="share")
    return png(fig)
