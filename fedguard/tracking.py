"""Experiment tracking: feed each round's metrics to TensorBoard and/or MLflow (run-config key ``tracking``).

The server app opens one tracker per run and feeds it after every round::

    from fedguard.tracking import open_trackers

    tracker = open_trackers(config.tracking, out, config.to_dict())   # before round 1
    try:
        for ...:
            record = runner.run_round(server_round)
            tracker.log_round(server_round, as_dict(record))           # after each round
        tracker.log_artifacts([out / "metrics.json", out / "adapter"]) # files or folders, at the end
    finally:
        tracker.close()                                                # or close(error="...") on failure

``tracking = "none"`` (the default) gives a tracker that does nothing, so the calls need no ``if``.

- ``tensorboard``: event files under ``OUTPUT_DIR/tensorboard/`` (``tensorboard --logdir OUTPUT_DIR/tensorboard``);
  every number of a round is a scalar at step = round; the run config is a text entry. Needs
  ``pip install "fedguard[tensorboard]"``.
- ``mlflow``: a local, offline store: the runs in ``OUTPUT_DIR/mlruns/mlflow.db`` (SQLite; MLflow 3 no longer
  writes its plain-file store without an opt-in) and artifacts under ``OUTPUT_DIR/mlruns/artifacts/``; the
  run config becomes the run's parameters. View with full MLflow: ``mlflow ui --backend-store-uri
  sqlite:///OUTPUT_DIR/mlruns/mlflow.db``. Needs ``pip install "fedguard[mlflow]"``. The run's id is kept in
  ``OUTPUT_DIR/mlruns/run_id``: a resumed FedGuard run (``resume = true``) continues that MLflow run (its later
  rounds at their own steps; a run-config value that changed is kept as the tag ``resumed/<key>``, since MLflow
  parameters cannot change) instead of starting a second one.

What is logged from a round's ``metrics`` dict: every finite number (bools as 0/1), nested dicts flattened
with ``/`` (``bytes_by_client/3/up``), and for a dict of strings (``clients_dropped``: node -> reason) its size
as ``clients_dropped/count``. Strings, ``None`` (no guarantee) and NaN/inf are skipped.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

from fedguard.config import parse_tracking

__all__ = ["Tracker", "TrackingError", "flatten_metrics", "open_trackers"]

MLFLOW_EXPERIMENT = "fedguard"


class TrackingError(RuntimeError):
    """A tracker could not be opened (its package is missing); the message names the extra to install."""


class Tracker(Protocol):
    """What the server app calls; every implementation accepts the same calls."""

    def log_round(self, round: int, metrics: Mapping[str, Any]) -> None:  # noqa: A002 - the metrics.json name
        """Log the numbers of one round (a ``metrics.json`` ``rounds`` entry) at step ``round``."""

    def log_artifacts(self, paths: Iterable[Path]) -> None:
        """Attach files or folders (e.g. ``metrics.json``, ``adapter/``) to the run, where the tracker can."""

    def close(self, error: str | None = None) -> None:
        """Flush and end the run; ``error`` (the one-line error that ended it) marks it failed."""


def open_trackers(spec: str, output_dir: Path, run_config: Mapping[str, Any], resume: bool = False) -> Tracker:
    """The trackers named by ``spec`` (the ``tracking`` value: ``"none"``, ``"tensorboard"``, ``"mlflow"`` or
    ``"tensorboard,mlflow"``) as one :class:`Tracker` writing under ``output_dir``. ``resume``: continue the
    run a previous process opened there, where the tracker has one (MLflow; TensorBoard appends anyway).

    Raises :class:`fedguard.config.ConfigError` for an unknown name and :class:`TrackingError` when a
    tracker's package is not installed.
    """
    output_dir = Path(output_dir)
    trackers: list[Tracker] = []
    try:
        for name in parse_tracking(spec):
            if name == "tensorboard":
                trackers.append(TensorBoardTracker(output_dir / "tensorboard", run_config))
            else:
                trackers.append(MlflowTracker(output_dir / "mlruns", run_config, run_name=output_dir.name,
                                              resume=resume))
    except BaseException:
        for tracker in trackers:
            tracker.close()
        raise
    return _Trackers(trackers)


def flatten_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The loggable numbers of ``metrics`` (see the module docstring), keyed by ``/``-joined names."""
    return dict(_numbers(metrics, prefix))


def _numbers(metrics: Mapping[str, Any], prefix: str) -> Iterator[tuple[str, float]]:
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            if value and all(isinstance(v, str) for v in value.values()):
                yield f"{name}/count", float(len(value))
            else:
                yield from _numbers(value, f"{name}/")
        elif isinstance(value, (bool, int, float)) and math.isfinite(float(value)):
            yield name, float(value)


class _Trackers:
    """Several trackers fed the same calls (none at all for ``tracking = "none"``)."""

    def __init__(self, trackers: list[Tracker]) -> None:
        self.trackers = trackers

    def log_round(self, round: int, metrics: Mapping[str, Any]) -> None:  # noqa: A002
        for tracker in self.trackers:
            tracker.log_round(round, metrics)

    def log_artifacts(self, paths: Iterable[Path]) -> None:
        paths = list(paths)
        for tracker in self.trackers:
            tracker.log_artifacts(paths)

    def close(self, error: str | None = None) -> None:
        for tracker in self.trackers:
            tracker.close(error)


class TensorBoardTracker:
    """Scalars per round in TensorBoard event files under ``log_dir``."""

    def __init__(self, log_dir: Path, run_config: Mapping[str, Any]) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise TrackingError(f"tracking='tensorboard' needs the tensorboard package ({err}); install it with "
                                'pip install "fedguard[tensorboard]"') from err
        self.writer = SummaryWriter(log_dir=str(log_dir))
        rows = "\n".join(f"| {key} | {value} |" for key, value in run_config.items())
        self.writer.add_text("run_config", f"| key | value |\n|---|---|\n{rows}", global_step=0)

    def log_round(self, round: int, metrics: Mapping[str, Any]) -> None:  # noqa: A002
        for tag, value in flatten_metrics(metrics).items():
            self.writer.add_scalar(tag, value, global_step=round)
        self.writer.flush()

    def log_artifacts(self, paths: Iterable[Path]) -> None:
        """TensorBoard keeps no artifacts: the files stay in the output directory beside the events."""

    def close(self, error: str | None = None) -> None:
        if error is not None:
            self.writer.add_text("error", error)
        self.writer.close()


class MlflowTracker:
    """One MLflow run in a local SQLite store under ``root`` (no server, no network); its id in ``root/run_id``."""

    def __init__(self, root: Path, run_config: Mapping[str, Any], run_name: str, resume: bool = False) -> None:
        try:
            from mlflow import MlflowClient
        except ImportError as err:
            raise TrackingError(f"tracking='mlflow' needs the mlflow package ({err}); install it with "
                                'pip install "fedguard[mlflow]"') from err
        root.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=f"sqlite:///{root.resolve() / 'mlflow.db'}")
        params = {str(key): str(value)[:6000] for key, value in run_config.items()}
        run_id_file = root / "run_id"
        previous = self._previous_run(run_id_file.read_text().strip()) if resume and run_id_file.is_file() else None
        if previous is not None:
            self.run_id = previous.info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
            for key, value in params.items():
                if key in previous.data.params and previous.data.params[key] != value:
                    self.client.set_tag(self.run_id, f"resumed/{key}", value)
            params = {k: v for k, v in params.items() if k not in previous.data.params}
        else:
            experiment = self.client.get_experiment_by_name(MLFLOW_EXPERIMENT)
            experiment_id = (experiment.experiment_id if experiment is not None else self.client.create_experiment(
                MLFLOW_EXPERIMENT, artifact_location=(root.resolve() / "artifacts").as_uri()))
            self.run_id = self.client.create_run(experiment_id, run_name=run_name).info.run_id
            run_id_file.write_text(self.run_id + "\n")
        self._log_params(params)

    def _previous_run(self, run_id: str):  # noqa: ANN202 - an mlflow Run, or None when the store lacks it
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_run(run_id)
        except MlflowException:
            return None

    def _log_params(self, params: Mapping[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(key, value) for key, value in params.items()]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 parameters per batch
            self.client.log_batch(self.run_id, params=items[start:start + 100])

    def log_round(self, round: int, metrics: Mapping[str, Any]) -> None:  # noqa: A002
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        values = [Metric(key, value, now, round) for key, value in flatten_metrics(metrics).items()]
        for start in range(0, len(values), 1000):  # MLflow takes at most 1000 metrics per batch
            self.client.log_batch(self.run_id, metrics=values[start:start + 1000])

    def log_artifacts(self, paths: Iterable[Path]) -> None:
        for path in map(Path, paths):
            if path.is_dir():
                self.client.log_artifacts(self.run_id, str(path), artifact_path=path.name)
            elif path.is_file():
                self.client.log_artifact(self.run_id, str(path))

    def close(self, error: str | None = None) -> None:
        if error is not None:
            self.client.set_tag(self.run_id, "error", error[:5000])
        self.client.set_terminated(self.run_id, "FAILED" if error is not None else "FINISHED")
