"""The run-config key ``tracking`` feeds every round to TensorBoard / MLflow, read back by their own readers."""

from __future__ import annotations

import builtins
import math

import pytest

from fedguard.config import ConfigError, RunConfig, parse_tracking
from fedguard.tracking import TrackingError, flatten_metrics, open_trackers

ROUNDS = [
    {"round": 1, "accuracy": 0.75, "loss": 0.52, "bytes_up": 1000, "train_loss": math.nan,
     "epsilon_model_certified": None, "clients_dropped": {"7": "timeout"}, "aggregated": True,
     "bytes_by_client": {"7": {"up": 400, "down": 300}}},
    {"round": 2, "accuracy": 0.8125, "loss": 0.47, "bytes_up": 1200, "train_loss": 0.4,
     "epsilon_model_certified": 2.5, "clients_dropped": {}, "aggregated": False,
     "bytes_by_client": {"7": {"up": 600, "down": 500}}},
]


def test_default_is_none_and_names_are_validated_with_the_config():
    assert RunConfig().tracking == "none" and parse_tracking("none") == ()
    assert parse_tracking("tensorboard, MLflow") == ("tensorboard", "mlflow")
    assert RunConfig.from_run_config({"tracking": "tensorboard,mlflow"}).tracking == "tensorboard,mlflow"
    for bad, reason in [("wandb", "unknown tracker 'wandb'"), ("", "unknown tracker ''"),
                        ("none,tensorboard", "unknown tracker 'none'"),
                        ("tensorboard,tensorboard", "named twice")]:
        with pytest.raises(ConfigError) as err:
            RunConfig.from_run_config({"tracking": bad})
        assert reason in str(err.value) and "allowed 'none' or a comma-separated list of tensorboard, mlflow" \
            in str(err.value)


def test_unknown_tracker_is_a_config_error_from_open_trackers_too(tmp_path):
    with pytest.raises(ConfigError, match="unknown tracker 'wandb'"):
        open_trackers("wandb", tmp_path, {})


def test_none_writes_nothing_and_accepts_every_call(tmp_path):
    tracker = open_trackers("none", tmp_path, {"seed": 1})
    tracker.log_round(1, ROUNDS[0])
    tracker.log_artifacts([tmp_path])
    tracker.close()
    assert list(tmp_path.iterdir()) == []


def test_flatten_keeps_finite_numbers_nested_numbers_and_counts_of_reasons():
    flat = flatten_metrics(ROUNDS[0])
    assert flat == {"round": 1.0, "accuracy": 0.75, "loss": 0.52, "bytes_up": 1000.0, "aggregated": 1.0,
                    "clients_dropped/count": 1.0, "bytes_by_client/7/up": 400.0, "bytes_by_client/7/down": 300.0}


def test_tensorboard_event_files_read_back_with_the_logged_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tracker = open_trackers("tensorboard", tmp_path, {"seed": 42, "tracking": "tensorboard"})
    for entry in ROUNDS:
        tracker.log_round(entry["round"], entry)
    tracker.close()

    log_dir = tmp_path / "tensorboard"
    assert any(p.name.startswith("events.out.tfevents") for p in log_dir.iterdir())
    events = EventAccumulator(str(log_dir))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert {"accuracy", "loss", "bytes_up", "epsilon_model_certified", "bytes_by_client/7/up"} <= set(scalars)
    assert [(e.step, e.value) for e in events.Scalars("accuracy")] == [(1, 0.75), (2, 0.8125)]
    assert [(e.step, e.value) for e in events.Scalars("bytes_by_client/7/up")] == [(1, 400.0), (2, 600.0)]
    assert [(e.step, e.value) for e in events.Scalars("epsilon_model_certified")] == [(2, 2.5)]  # None skipped
    assert [e.step for e in events.Scalars("train_loss")] == [2]  # NaN skipped


def test_mlflow_logs_params_metrics_and_artifacts_to_a_local_store(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    (tmp_path / "metrics.json").write_text('{"rounds": []}')
    tracker = open_trackers("mlflow", tmp_path, {"seed": 42, "lora-r": 8})
    for entry in ROUNDS:
        tracker.log_round(entry["round"], entry)
    tracker.log_artifacts([tmp_path / "metrics.json"])
    tracker.close()

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("fedguard").experiment_id])[0]
    assert run.data.params == {"seed": "42", "lora-r": "8"} and run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "accuracy")
    assert sorted((m.step, m.value) for m in history) == [(1, 0.75), (2, 0.8125)]
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["metrics.json"]
    assert (tmp_path / "mlruns" / "artifacts").is_dir()


def test_a_resumed_run_continues_its_mlflow_run_instead_of_starting_another(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    first = open_trackers("mlflow", tmp_path, {"seed": 42, "num-server-rounds": 2})
    first.log_round(1, ROUNDS[0])
    first.close(error="KeyboardInterrupt: stopped after round 1")
    resumed = open_trackers("mlflow", tmp_path, {"seed": 42, "num-server-rounds": 3, "resume": True}, resume=True)
    resumed.log_round(2, ROUNDS[1])
    resumed.close()
    resumed_id = (tmp_path / "mlruns" / "run_id").read_text().strip()
    fresh = open_trackers("mlflow", tmp_path, {"seed": 42}, resume=False)  # not resuming: a new MLflow run
    fresh.close()

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("fedguard").experiment_id])
    assert len(runs) == 2 and resumed_id in {r.info.run_id for r in runs}
    run = client.get_run(resumed_id)
    assert sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "accuracy")) == \
        [(1, 0.75), (2, 0.8125)]
    assert run.info.status == "FINISHED"
    assert run.data.params == {"seed": "42", "num-server-rounds": "2", "resume": "True"}
    assert run.data.tags["resumed/num-server-rounds"] == "3"


def test_a_missing_package_names_the_extra_to_install(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(TrackingError, match=r'pip install "fedguard\[tensorboard\]"'):
        open_trackers("tensorboard", tmp_path, {})
