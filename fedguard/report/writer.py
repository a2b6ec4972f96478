"""Write ``RUN_DIR/report.html`` and the same plots as ``RUN_DIR/report/*.png``."""

from __future__ import annotations

from pathlib import Path

from fedguard.report import plots
from fedguard.report.epsilon import epsilon_series, privacy_delta
from fedguard.report.page import render_page
from fedguard.report.run_files import RunFiles, load_run

__all__ = ["PLOT_DIR", "REPORT_FILE", "make_plots", "write_report"]

REPORT_FILE = "report.html"
PLOT_DIR = "report"


def make_plots(run: RunFiles) -> dict[str, bytes]:
    """The PNG plots the run has data for: ``quality``, ``epsilon``, ``traffic``, ``time``."""
    images: dict[str, bytes] = {}
    rounds = run.rounds
    if rounds or run.metrics.get("initial"):
        images["quality"] = plots.quality_plot(rounds, run.metrics.get("initial"), run.baseline)
    series = epsilon_series(rounds)
    if series:
        images["epsilon"] = plots.epsilon_plot(series, [r["round"] for r in rounds], privacy_delta(run.metrics))
    if rounds:
        images["traffic"] = plots.traffic_plot(rounds)
        images["time"] = plots.time_plot(rounds)
    return images


def write_report(run_dir: Path, baseline: Path | None = None) -> Path:
    """Write the report of ``run_dir`` and return the path of ``report.html``.

    ``baseline``: a centralized-baseline JSON file (default ``run_dir/baseline.json`` when present). Raises
    :class:`fedguard.report.run_files.ReportError` when ``run_dir`` has no readable ``metrics.json``.
    """
    run = load_run(Path(run_dir), baseline)
    images = make_plots(run)
    folder = run.run_dir / PLOT_DIR
    folder.mkdir(exist_ok=True)
    for stale in folder.glob("*.png"):
        if stale.stem not in images:
            stale.unlink()
    for name, png in images.items():
        (folder / f"{name}.png").write_bytes(png)
    path = run.run_dir / REPORT_FILE
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(render_page(run, images), encoding="utf-8")
    tmp.replace(path)
    return path
