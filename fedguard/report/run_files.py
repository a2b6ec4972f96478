"""Read what a run left in its output directory, for the report: every part but ``metrics.json`` is optional."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["BASELINE_FILE", "Baseline", "ReportError", "RunFiles", "load_run"]

BASELINE_FILE = "baseline.json"
ATTACK_REPORT_FILE = "attack_report.json"  # written by `fedguard attack` (fedguard/attacks/report.py)
BASELINE_FORMAT = ('{"label": "centralized LoRA", "rounds": [{"round": 1, "accuracy": 0.79, "loss": 0.45}, ...]} '
                   '(or just the list of rounds; "loss" and "perplexity" optional)')


class ReportError(ValueError):
    """A run directory (or a baseline file) cannot be reported on; the message says which file and why."""


@dataclass(frozen=True)
class Baseline:
    """A centralized run to compare with: its accuracy (and loss/perplexity) after each round's examples."""

    label: str
    rounds: list[dict[str, Any]]
    source: Path

    def by_round(self) -> dict[int, dict[str, Any]]:
        return {int(r["round"]): r for r in self.rounds}


@dataclass(frozen=True)
class RunFiles:
    """The parts of a run directory the report shows (``None`` / empty where the run has no such part)."""

    run_dir: Path
    metrics: dict[str, Any]
    config: dict[str, Any] | None = None
    baseline: Baseline | None = None
    attacks: dict[str, dict[str, Any]] = field(default_factory=dict)  # attack name -> verdict, metrics, ...
    generations: list[dict[str, Any]] = field(default_factory=list)
    unreadable_generations: int = 0  # lines of generations.jsonl that were not JSON objects (e.g. cut by a crash)

    @property
    def rounds(self) -> list[dict[str, Any]]:
        return self.metrics["rounds"]


def load_run(run_dir: Path, baseline: Path | None = None) -> RunFiles:
    """Read ``run_dir``; ``baseline`` (default ``run_dir/baseline.json`` when present) is a centralized run in
    the format of :data:`BASELINE_FORMAT`. Raises :class:`ReportError` without ``metrics.json``."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir} is not a directory: give a run's output-dir (e.g. runs/latest)")
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.is_file():
        raise ReportError(f"{metrics_path} not found: give the output-dir of a run that finished at least its "
                          "evaluation before round 1 (e.g. runs/latest)")
    metrics = _read_json(metrics_path)
    if not isinstance(metrics, dict) or not isinstance(metrics.get("rounds", []), list):
        raise ReportError(f"{metrics_path}: expected an object with a 'rounds' list, as FedGuard writes")
    metrics.setdefault("rounds", [])
    if any(not isinstance(r, dict) or not isinstance(r.get("round"), int) for r in metrics["rounds"]):
        raise ReportError(f"{metrics_path}: every 'rounds' entry must be an object with an integer 'round'")
    config_path = run_dir / "config.json"
    config = _read_json(config_path) if config_path.is_file() else None
    if baseline is None and (run_dir / BASELINE_FILE).is_file():
        baseline = run_dir / BASELINE_FILE
    generations, unreadable = _read_generations(run_dir / "generations.jsonl")
    return RunFiles(run_dir, metrics, config if isinstance(config, dict) else None,
                    _read_baseline(Path(baseline)) if baseline is not None else None,
                    _read_attacks(run_dir, metrics), generations, unreadable)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ReportError(f"{path} is not valid JSON: {err}") from err


def _read_baseline(path: Path) -> Baseline:
    if not path.is_file():
        raise ReportError(f"baseline {path} not found; expected a JSON file like {BASELINE_FORMAT}")
    data = _read_json(path)
    rows = data.get("rounds") if isinstance(data, dict) else data
    label = str(data.get("label", "centralized baseline")) if isinstance(data, dict) else "centralized baseline"
    if not isinstance(rows, list) or not all(_baseline_row(r) for r in rows):
        raise ReportError(f"baseline {path}: expected {BASELINE_FORMAT}")
    return Baseline(label, rows, path)


def _baseline_row(row: Any) -> bool:
    return (isinstance(row, dict) and isinstance(row.get("round"), int)
            and isinstance(row.get("accuracy"), (int, float)) and math.isfinite(row["accuracy"]))


def _read_attacks(run_dir: Path, metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``metrics.json`` ``attacks`` (metrics and verdicts) completed by ``attack_report.json`` (threat, release,
    settings) when present."""
    summary = metrics.get("attacks")
    attacks = {name: dict(entry) for name, entry in (summary or {}).items() if isinstance(entry, dict)}
    path = run_dir / ATTACK_REPORT_FILE
    if path.is_file():
        report = _read_json(path)
        for name, entry in (report.get("attacks") or {}).items() if isinstance(report, dict) else ():
            if isinstance(entry, dict):
                attacks.setdefault(name, {}).update(entry)
    return attacks


def _read_generations(path: Path) -> tuple[list[dict[str, Any]], int]:
    if not path.is_file():
        return [], 0
    rows, unreadable = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            unreadable += 1
            continue
        if isinstance(row, dict) and "generation" in row:
            rows.append(row)
        else:
            unreadable += 1
    return rows, unreadable
