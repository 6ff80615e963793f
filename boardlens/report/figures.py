"""The report's figures (matplotlib, no pyplot: no global state, no display needed).

- `curves(source, group)`: each SAE's metrics against its training tokens (steps when the
  batch size is unknown), one line per SAE, coloured by trainer kind.
- `pareto(sources, group)`: the paper's frontiers: L0 against coverage, reconstruction and
  loss recovered, one point per SAE (its newest evaluation), coloured by trainer kind, marked
  by source; the references (linear-probe ceiling, MLP neurons, random-SAE and random-init
  floors) as horizontal lines on the same eval set.
"""

from __future__ import annotations

import io
from collections.abc import Callable

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, NullFormatter

from boardlens.report.runs import SaeHistory, Source

KIND_COLORS = {"standard": "#1f77b4", "p_anneal": "#ff7f0e", "gated": "#2ca02c", "gated_anneal": "#d62728",
               "topk": "#9467bd", "batch_topk": "#8c564b"}
OTHER_COLORS = ("#e377c2", "#bcbd22", "#17becf", "#7f7f7f")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LINESTYLES = ("-", "--", "-.", ":")


def kind_color(kind: str, kinds: list[str]) -> str:
    if kind in KIND_COLORS:
        return KIND_COLORS[kind]
    others = [k for k in kinds if k not in KIND_COLORS]
    return OTHER_COLORS[others.index(kind) % len(OTHER_COLORS)] if kind in others else OTHER_COLORS[0]


def reference_style(name: str) -> dict:
    """Line style and legend label of a reference."""
    if name == "linear_probe":
        return {"color": "black", "linestyle": "--", "label": "ceiling: linear probe"}
    if name == "mlp_neurons":
        return {"color": "#7f7f7f", "linestyle": ":", "label": "MLP neurons"}
    if name.startswith("random_sae"):
        return {"color": "#444444", "linestyle": "-.", "label": f"floor: {name} (untrained)"}
    if name == "random_init_sae":
        return {"color": "#aaaaaa", "linestyle": (0, (6, 2, 1, 2)), "label": "floor: SAE on random-init model"}
    return {"color": "#bbbbbb", "linestyle": "--", "label": name}


def png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def _group_value(metric: str, group: str) -> Callable[[dict], float | None]:
    return lambda r: (r.get("averages", {}).get(group) or {}).get(metric)


def _loss(key: str) -> Callable[[dict], float | None]:
    return lambda r: (r.get("loss") or {}).get(key)


def _panels(group: str) -> list[tuple[str, Callable[[dict], float | None], bool]]:
    """(title, value of a record, log scale) per panel of the curves figure."""
    return [(f"coverage ({group})", _group_value("coverage", group), False),
            (f"board reconstruction ({group})", _group_value("reconstruction", group), False),
            ("L0 (active latents per position)", lambda r: r.get("l0"), True),
            ("variance explained", lambda r: r.get("var_explained"), False),
            ("loss recovered", _loss("recovered"), False),
            ("KL(clean || SAE), nats per move", _loss("kl"), False)]


def curves(source: Source, group: str) -> Figure:
    """2 x 3 panels of each SAE's metrics over training."""
    fig = Figure(figsize=(14, 7.5), layout="constrained")
    axes = fig.subplots(2, 3).flatten()
    kinds = sorted({h.kind for h in source.saes.values()})
    seen: dict[str, int] = {}
    handles = []
    for h in source.saes.values():
        style = LINESTYLES[seen.get(h.kind, 0) % len(LINESTYLES)]
        seen[h.kind] = seen.get(h.kind, 0) + 1
        color = kind_color(h.kind, kinds)
        xs = [h.tokens(r) / 1e6 if h.tokens_per_step else r["step"] for r in h.records]
        for ax, (_, value, _) in zip(axes, _panels(group), strict=True):
            pts = [(x, value(r)) for x, r in zip(xs, h.records, strict=True) if value(r) is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True), color=color, linestyle=style, marker=".", markersize=4)
        handles.append(Line2D([], [], color=color, linestyle=style, label=f"{h.name} ({h.kind})"))
    xlabel = "SAE training tokens (millions)" if all(h.tokens_per_step for h in source.saes.values()) else "SAE step"
    for ax, (title, _, log) in zip(axes, _panels(group), strict=True):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        if log and ax.has_data():
            ax.set_yscale("log")
        if not ax.has_data():
            ax.text(0.5, 0.5, "not measured\n(no model given to the evaluator)", ha="center", va="center",
                    transform=ax.transAxes, color="#777777")
    fig.legend(handles=handles, loc="outside lower center", ncol=min(4, len(handles)), fontsize=8)
    fig.suptitle(f"{source.name}: each SAE over training", fontsize=12)
    return fig


def _reference_lines(ax, references: dict[str, dict], value: Callable[[dict], float | None]) -> list[Line2D]:
    out = []
    for name, rec in sorted(references.items()):
        v = value(rec)
        if v is None:
            continue
        style = reference_style(name)
        ax.axhline(v, color=style["color"], linestyle=style["linestyle"], linewidth=1.2)
        out.append(Line2D([], [], color=style["color"], linestyle=style["linestyle"],
                          label=f"{style['label']}: {v:.3f}"))
    return out


def _l0_ticks(ax) -> None:
    """Label L0 at 1-2-5 steps: matplotlib's labelled minor ticks overlap on short log ranges."""
    lo, hi = ax.get_xlim()
    ticks = [m * 10**e for e in range(-1, 6) for m in (1, 2, 5) if lo <= m * 10**e <= hi]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.set_xticklabels([f"{t:g}" for t in ticks])
    ax.xaxis.set_minor_formatter(NullFormatter())


def pareto(sources: list[Source], group: str) -> Figure:
    """L0 against coverage, reconstruction and loss recovered; references as lines."""
    fig = Figure(figsize=(15, 5.2), layout="constrained")
    axes = fig.subplots(1, 3)
    saes: list[SaeHistory] = [h for s in sources for h in s.saes.values()]
    kinds = sorted({h.kind for h in saes})
    panels = [("coverage", _group_value("coverage", group)), ("board reconstruction", _group_value("reconstruction", group)),
              ("loss recovered", _loss("recovered"))]
    # several sources' references would be several eval sets: the first source's are drawn
    refs = sources[0].references
    for ax, (title, value) in zip(axes, panels, strict=True):
        for i, s in enumerate(sources):
            for h in s.saes.values():
                y, l0 = value(h.final), h.final.get("l0")
                if y is not None and l0:
                    ax.scatter([l0], [y], color=kind_color(h.kind, kinds), marker=MARKERS[i % len(MARKERS)], s=40,
                               edgecolors="black", linewidths=0.4, zorder=3)
        lines = _reference_lines(ax, refs, value)
        if lines:  # each panel names its own reference values
            ax.legend(handles=lines, fontsize=7, loc="best", framealpha=0.85, title_fontsize=7,
                      title=f"references on {sources[0].name}'s eval set" if len(sources) > 1 else None)
        ax.set_xscale("log")
        _l0_ticks(ax)
        ax.set_xlabel("L0 (active latents per position, log scale)")
        ax.set_title(f"L0 vs {title}" + (f" ({group})" if "loss" not in title else ""), fontsize=10)
        ax.grid(alpha=0.3, which="both")
        if not any(c.get_offsets().size for c in ax.collections):
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes, color="#777777")
    handles = [Line2D([], [], color=kind_color(k, kinds), marker="o", linestyle="", label=k) for k in kinds]
    if len(sources) > 1:
        handles += [Line2D([], [], color="#555555", marker=MARKERS[i % len(MARKERS)], linestyle="", label=s.name)
                    for i, s in enumerate(sources)]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(5, len(handles)), fontsize=8)
    fig.suptitle(f"Pareto: sparsity against the board-game metrics ({len(saes)} SAEs, newest evaluation each)",
                 fontsize=12)
    return fig
