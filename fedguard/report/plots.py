"""The report's plots as PNG bytes (matplotlib's object API on the Agg canvas: no display, no global state)."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

from fedguard.report.epsilon import EpsilonField
from fedguard.report.run_files import Baseline, ReportError

__all__ = ["epsilon_plot", "quality_plot", "time_plot", "traffic_plot"]

TIME_PARTS = (("client_seconds", "clients (critical path)"), ("server_seconds", "server"),
              ("messaging_seconds", "messaging / waiting"), ("eval_seconds", "evaluation"))
_COLOURS = {"model": "tab:blue", "server": "tab:red", "adapter": "tab:purple"}
_RELEASE_COLOURS = {"activations": "tab:orange", "labels (randomised response)": "tab:green"}


def _figure(rows: int = 1, cols: int = 1, width: float = 7.0, height: float = 3.6) -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ReportError(f"fedguard report draws its plots with matplotlib ({err}); install it with "
                          'pip install "fedguard[report]"') from err
    return Figure(figsize=(width * cols, height * rows), layout="constrained")


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    return buffer.getvalue()


def _integer_rounds(axes: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    axes.xaxis.set_major_locator(MaxNLocator(integer=True))


def _legend_below(axes: Any, columns: int) -> None:
    axes.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=columns, frameon=False)


def _value(entry: dict[str, Any], key: str) -> float:
    value = entry.get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def quality_plot(rounds: Sequence[dict[str, Any]], initial: dict[str, Any] | None,
                 baseline: Baseline | None) -> bytes:
    """Accuracy, loss and (when the rounds have it) perplexity per round; round 0 = before training."""
    entries = ([{"round": 0, **initial}] if initial else []) + list(rounds)
    keys = [("accuracy", "accuracy"), ("loss", "held-out loss")]
    if any(r.get("perplexity") is not None for r in rounds):
        keys.append(("perplexity", "perplexity"))
    figure = _figure(1, len(keys), width=4.2)
    x = [r["round"] for r in entries]
    for axes, (key, title) in zip(figure.subplots(1, len(keys), squeeze=False)[0], keys):
        axes.plot(x, [_value(r, key) for r in entries], marker="o", label="federated split")
        if baseline is not None and any(key in r for r in baseline.rounds):
            axes.plot([r["round"] for r in baseline.rounds], [_value(r, key) for r in baseline.rounds],
                      marker="s", color="grey", label=baseline.label)
            axes.legend(fontsize=8)
        axes.set(title=title, xlabel="round")
        axes.grid(alpha=0.3)
        _integer_rounds(axes)
    return _png(figure)


def epsilon_plot(series: dict[EpsilonField, list[float | None]], rounds: Sequence[int], delta: float | None) -> bytes:
    """ε per round: certified bounds solid ("guarantee"), estimates dashed ("estimate, not a guarantee"),
    median clients with open markers; log scale when the values span more than two decades."""
    figure = _figure(width=9.0, height=5.0)
    axes = figure.subplots()
    for field, values in series.items():
        colour = _RELEASE_COLOURS.get(field.release, _COLOURS[field.adversary])
        median = field.statistic == "median client"
        axes.plot(rounds, [math.nan if v is None else v for v in values], color=colour,
                  linestyle="-" if field.guarantee else "--", marker="o", markerfacecolor="white" if median else colour,
                  linewidth=1.2 if median else 2.0, label=field.label)
    positive = [v for values in series.values() for v in values if v is not None and v > 0]
    if positive and max(positive) / min(positive) > 100:
        axes.set_yscale("log")
    suffix = f" at δ = {delta:g}" if delta is not None else ""
    axes.set(title=f"privacy loss ε per round{suffix}; smaller is more private\n"
                   "solid = guarantee (certified bound), dashed = estimate, not a guarantee",
             xlabel="round", ylabel="ε")
    axes.grid(alpha=0.3)
    _integer_rounds(axes)
    _legend_below(axes, columns=2)
    return _png(figure)


def traffic_plot(rounds: Sequence[dict[str, Any]]) -> bytes:
    """Payload megabytes sent up (clients -> server) and down per round, side by side."""
    figure = _figure()
    axes = figure.subplots()
    x = [r["round"] for r in rounds]
    axes.bar([v - 0.2 for v in x], [_value(r, "bytes_up") / 1e6 for r in rounds], width=0.4, label="up (to server)")
    axes.bar([v + 0.2 for v in x], [_value(r, "bytes_down") / 1e6 for r in rounds], width=0.4,
             label="down (to clients)")
    axes.set(title="payload per round", xlabel="round", ylabel="MB", xticks=x)
    _legend_below(axes, columns=2)
    return _png(figure)


def time_plot(rounds: Sequence[dict[str, Any]]) -> bytes:
    """Each round's wall time split into client compute, server compute, messaging and evaluation (stacked)."""
    figure = _figure()
    axes = figure.subplots()
    x = [r["round"] for r in rounds]
    bottom = [0.0] * len(rounds)
    for key, label in TIME_PARTS:
        heights = [0.0 if math.isnan(_value(r, key)) else _value(r, key) for r in rounds]
        axes.bar(x, heights, bottom=bottom, label=label)
        bottom = [b + h for b, h in zip(bottom, heights)]
    axes.set(title="where each round's time went", xlabel="round", ylabel="seconds", xticks=x)
    _legend_below(axes, columns=4)
    return _png(figure)
