"""The run configuration: Flower's run config, validated once into a typed, frozen object.

Every other module receives a :class:`RunConfig` (or the part of it it needs) and never reads the
raw Flower run config itself. Keys are the public run-config names (``split-layer``, ``lora-r`` ...)
declared in ``[tool.flwr.app.config]`` of ``pyproject.toml``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

PARTITIONERS = ("iid", "dirichlet", "pathological")
TASKS = ("classification", "causal-lm")
LABEL_PROTECTIONS = ("auto", "clear", "randomized-response", "u-shape")
DEFAULT_DATASETS = {"classification": "sst2", "causal-lm": "alpaca-libre"}  # what dataset="auto" means
ACCOUNTANTS = ("edgeworth", "pld", "rdp")
TRACKERS = ("tensorboard", "mlflow")  # run-config key tracking; see fedguard/tracking.py
MAX_CANARIES = 256  # distinct made-up names of the causal-LM canaries (fedguard/data/canaries.py)
ACTIVATION_COMPRESSIONS = ("none", "int8", "topk")  # see fedguard/protocol/wire.py
SPLIT_TRANSPORTS = ("stream", "flower")  # see fedguard/apps/transports.py
DEVICE_SETTING = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")  # checked against the machine by fedguard/model/device.py
PRECISIONS = ("fp32", "bf16")
ACTIVATION_REUSE = ("none", "round", "run")  # how often an example's noised release is redrawn (see below)


class ConfigError(ValueError):
    """Raised when the run configuration is invalid; the message lists every problem found."""


@dataclass(frozen=True)
class RunConfig:
    """Validated FedGuard run configuration (one per run; identical on server and clients)."""

    model: str = ""
    task: str = "classification"
    split_layer: int = 2
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_target_modules: tuple[str, ...] = ("auto",)
    num_server_rounds: int = 6
    fraction_train: float = 1.0
    min_fit_clients: int = 2
    local_steps: int = 30
    batch_size: int = 32
    learning_rate: float = 1e-3
    exchange_batches: int = 1
    split_transport: str = "stream"
    data_plane_address: str = ""
    activation_dtype: str = "float32"
    activation_compression: str = "none"
    activation_topk: float = 0.1
    group_by_length: bool = True
    dataset: str = "auto"
    text_column: str = "sentence"
    label_column: str = "label"
    max_length: int = 64
    partitioner: str = "iid"
    dirichlet_alpha: float = 0.5
    pathological_classes: int = 1
    eval_examples: int = 0
    seed: int = 42
    output_dir: str = "runs/latest"
    round_timeout: float = 600.0
    resume: bool = False
    # Hardware (fedguard/model/device.py): where each process computes, and in which precision.
    device: str = "auto"  # clients: auto | cpu | cuda | cuda:N
    server_device: str = "auto"  # the ServerApp, same values
    precision: str = "fp32"  # fp32 | bf16 (bfloat16 autocast for compute; adapters and optimiser state stay fp32)
    # Local differential privacy (0 = off). See docs/threat-model.md for what each one protects.
    dp_noise_multiplier: float = 0.0
    dp_max_grad_norm: float = 1.0  # C_c: per-example clip of the client part of the gradient
    dp_server_max_grad_norm: float = 1.0  # C_s: per-example clip of the server part (whole-model DP-SGD)
    dp_target_epsilon: float = 0.0
    dp_delta: float = 1e-5
    act_clip_norm: float = 0.0
    act_noise_multiplier: float = 0.0
    dchi_eta: float = 0.0
    dchi_token_clip: float = 1.0
    # Defences at the cut (docs/defences.md). bottleneck-dim: learned H -> k map on the client, k -> H on the
    # server, trained with the noise in the loop (0 = off). activation-reuse: "none" (fresh noise for every
    # release), "round" or "run" (an example's noised release is drawn once per round / once per run and sent
    # again unchanged; needs a frozen bottom: split-layer 0, no bottleneck). dcor-weight: distance-correlation
    # penalty between each example's input token embeddings and what it sends (empirical, no guarantee).
    bottleneck_dim: int = 0
    activation_reuse: str = "none"
    dcor_weight: float = 0.0
    # d_chi only: SAP's contributing-token allocation, noise / (1 + dchi-importance) on tokens with strong label
    # log-odds in public (held-out) text (fedguard/mechanisms/token_importance.py). No guarantee: 0 = off.
    dchi_importance: float = 0.0
    label_epsilon: float = 0.0
    label_protection: str = "auto"
    max_epsilon: float = 0.0
    max_activation_epsilon: float = 0.0
    accountant: str = "edgeworth"
    # Experiment trackers fed after every round: "none" or a comma-separated subset of TRACKERS.
    tracking: str = "none"
    # Attack evaluation: examples per client whose sent tensors are written to output-dir/captures (0 = off).
    capture_activations: int = 0
    # Attack evaluation: synthetic secrets (canaries) in the shards of partitions 0..canary-clients-1, each
    # canary-repeats times (0 = off; docs/attacks.md "Canary exposure"). Never for production data.
    canaries: int = 0
    canary_repeats: int = 1
    canary_clients: int = 1
    canary_digits: int = 6
    # Server aggregation strategy (see strategies/ and docs/writing-a-strategy.md).
    strategy: str = "auto"
    strategy_options: str = ""
    strategy_max_update_norm: float = 0.0
    strategy_reject_norm_factor: float = 10.0
    strategy_trim_fraction: float = 0.1
    strategy_svd_rank: int = 0

    @classmethod
    def from_run_config(cls, raw: Mapping[str, Any]) -> RunConfig:
        """Build and validate from a Flower run config (keys spelled with hyphens).

        Unknown keys are rejected, so a typo never silently falls back to a default.
        """
        known = {f.name.replace("_", "-"): f for f in fields(cls)}
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise ConfigError(
                f"unknown run-config key(s): {', '.join(unknown)}; allowed: {', '.join(sorted(known))}"
            )
        values: dict[str, Any] = {}
        problems: list[str] = []
        for key, value in raw.items():
            field = known[key]
            try:
                values[field.name] = _coerce(key, value, field.type)
            except ConfigError as err:
                problems.append(str(err))
        if problems:
            raise ConfigError("invalid run config: " + "; ".join(problems))
        config = cls(**values)
        config.validate()
        return config

    def __post_init__(self) -> None:
        """Make every ``auto`` concrete for the task, so no other module sees it: ``dataset`` (sst2 for
        classification, the packaged alpaca-libre instructions for causal-lm) and ``label-protection``
        (clear for classification; u-shape for causal-lm, where the labels are the text itself)."""
        if self.dataset == "auto" and self.task in DEFAULT_DATASETS:
            object.__setattr__(self, "dataset", DEFAULT_DATASETS[self.task])
        if self.label_protection == "auto":
            object.__setattr__(self, "label_protection", "u-shape" if self.task == "causal-lm" else "clear")
        if self.dp_target_epsilon > 0 and self.max_epsilon == 0:  # the target is also the budget
            object.__setattr__(self, "max_epsilon", self.dp_target_epsilon)

    def validate(self) -> None:
        """Check every value; raise :class:`ConfigError` naming each bad key and what is allowed."""
        problems: list[str] = []

        def need(ok: bool, message: str) -> None:
            if not ok:
                problems.append(message)

        need(self.task in TASKS, f"task={self.task!r}: allowed {', '.join(TASKS)}")
        need(self.split_layer >= 0, f"split-layer={self.split_layer}: must be >= 0 (the upper limit "
             "is the model's number of blocks, checked when the model is loaded)")
        need(self.lora_r >= 1, f"lora-r={self.lora_r}: must be an integer >= 1")
        need(_finite(self.lora_alpha) and self.lora_alpha > 0, f"lora-alpha={self.lora_alpha}: must be > 0")
        need(_finite(self.lora_dropout) and 0.0 <= self.lora_dropout < 1.0,
             f"lora-dropout={self.lora_dropout}: must be in [0, 1)")
        need(len(self.lora_target_modules) > 0 and all(self.lora_target_modules),
             "lora-target-modules: give a comma-separated list of module names, or 'auto'")
        need(self.num_server_rounds >= 1, f"num-server-rounds={self.num_server_rounds}: must be >= 1")
        need(_finite(self.fraction_train) and 0.0 < self.fraction_train <= 1.0,
             f"fraction-train={self.fraction_train}: must be in (0, 1]")
        need(self.min_fit_clients >= 1, f"min-fit-clients={self.min_fit_clients}: must be >= 1")
        need(self.local_steps >= 1, f"local-steps={self.local_steps}: must be >= 1")
        need(self.batch_size >= 1, f"batch-size={self.batch_size}: must be >= 1")
        need(_finite(self.learning_rate) and self.learning_rate > 0,
             f"learning-rate={self.learning_rate}: must be a positive finite number")
        need(self.exchange_batches >= 1, f"exchange-batches={self.exchange_batches}: must be >= 1")
        need(self.split_transport in SPLIT_TRANSPORTS,
             f"split-transport={self.split_transport!r}: allowed {', '.join(SPLIT_TRANSPORTS)}")
        need(_valid_address(self.data_plane_address),
             f"data-plane-address={self.data_plane_address!r}: give HOST:PORT (e.g. '0.0.0.0:7443' or "
             "'10.0.0.5:7443'), or '' for this host and an ephemeral port")
        need(self.activation_dtype in ("float32", "float16", "bfloat16"),
             f"activation-dtype={self.activation_dtype!r}: allowed float32, float16, bfloat16")
        need(self.activation_compression in ACTIVATION_COMPRESSIONS,
             f"activation-compression={self.activation_compression!r}: allowed "
             f"{', '.join(ACTIVATION_COMPRESSIONS)}")
        need(_finite(self.activation_topk) and 0.0 < self.activation_topk <= 1.0,
             f"activation-topk={self.activation_topk}: must be in (0, 1] (fraction of hidden features kept per token)")
        need(bool(self.dataset), "dataset: must be 'auto', 'sst2', 'alpaca-libre' or a local file/folder path")
        need(bool(self.text_column), "text-column: must not be empty")
        need(bool(self.label_column), "label-column: must not be empty")
        need(self.max_length >= 2, f"max-length={self.max_length}: must be >= 2")
        need(self.partitioner in PARTITIONERS,
             f"partitioner={self.partitioner!r}: unknown; allowed {', '.join(PARTITIONERS)}")
        need(not (self.task == "causal-lm" and self.partitioner != "iid"),
             f"partitioner={self.partitioner!r} splits by class label; task='causal-lm' has none: use 'iid'")
        need(not (self.task == "causal-lm" and self.dataset == "sst2"),
             "dataset='sst2' is a classification set; task='causal-lm' needs instruction data: 'auto' / "
             "'alpaca-libre' (packaged) or a local JSON/JSONL file of instruction/input/output or chat records")
        need(_finite(self.dirichlet_alpha) and self.dirichlet_alpha > 0,
             f"dirichlet-alpha={self.dirichlet_alpha}: must be > 0")
        need(self.pathological_classes >= 1,
             f"pathological-classes={self.pathological_classes}: must be >= 1")
        need(self.eval_examples >= 0, f"eval-examples={self.eval_examples}: must be >= 0 (0 = all)")
        need(self.capture_activations >= 0,
             f"capture-activations={self.capture_activations}: must be >= 0 (0 = off)")
        need(0 <= self.canaries <= MAX_CANARIES, f"canaries={self.canaries}: must be in 0..{MAX_CANARIES} (0 = off)")
        need(self.canary_repeats >= 1, f"canary-repeats={self.canary_repeats}: must be >= 1 (copies of each canary "
             "per canary client)")
        need(self.canary_clients >= 1, f"canary-clients={self.canary_clients}: must be >= 1 (partitions "
             "0..canary-clients-1 receive the canaries)")
        need(1 <= self.canary_digits <= 12, f"canary-digits={self.canary_digits}: must be in 1..12 (digits of a "
             "causal-LM canary's secret code)")
        need(bool(self.output_dir), "output-dir: must not be empty")
        need(_finite(self.round_timeout) and self.round_timeout > 0,
             f"round-timeout={self.round_timeout}: must be > 0 seconds")
        for key, value in (("device", self.device), ("server-device", self.server_device)):
            need(bool(DEVICE_SETTING.match(value)), f"{key}={value!r}: allowed 'auto' (CUDA when the process sees "
                 "a GPU, else CPU), 'cpu', 'cuda' or 'cuda:N'")
        need(self.precision in PRECISIONS, f"precision={self.precision!r}: allowed {', '.join(PRECISIONS)} "
             "(bf16 = bfloat16 autocast for compute; adapters and optimiser state stay fp32)")
        need(bool(self.strategy.strip()), "strategy: must be a strategy name (e.g. fedavg, ffa-lora, svd), "
             "'auto', or a dotted path 'package.module:Name'")
        try:
            parse_strategy_options(self.strategy_options)
        except ConfigError as err:
            problems.append(str(err))
        need(_finite(self.strategy_max_update_norm) and self.strategy_max_update_norm >= 0,
             f"strategy-max-update-norm={self.strategy_max_update_norm}: must be >= 0 (0 = no bound)")
        need(_finite(self.strategy_reject_norm_factor) and self.strategy_reject_norm_factor >= 1,
             f"strategy-reject-norm-factor={self.strategy_reject_norm_factor}: must be >= 1")
        need(_finite(self.strategy_trim_fraction) and 0.0 <= self.strategy_trim_fraction < 0.5,
             f"strategy-trim-fraction={self.strategy_trim_fraction}: must be in [0, 0.5)")
        need(0 <= self.strategy_svd_rank <= self.lora_r,
             f"strategy-svd-rank={self.strategy_svd_rank}: must be in [0, lora-r={self.lora_r}] (0 = lora-r)")
        try:
            parse_tracking(self.tracking)
        except ConfigError as err:
            problems.append(str(err))
        self._validate_privacy(need)
        if problems:
            raise ConfigError("invalid run config: " + "; ".join(problems))

    def _validate_privacy(self, need) -> None:  # noqa: ANN001 - the collector above
        for key, value in (("dp-noise-multiplier", self.dp_noise_multiplier),
                           ("dp-target-epsilon", self.dp_target_epsilon), ("act-clip-norm", self.act_clip_norm),
                           ("act-noise-multiplier", self.act_noise_multiplier), ("label-epsilon", self.label_epsilon),
                           ("dchi-eta", self.dchi_eta),
                           ("max-epsilon", self.max_epsilon), ("max-activation-epsilon", self.max_activation_epsilon)):
            need(_finite(value) and value >= 0, f"{key}={value}: must be a finite number >= 0 (0 = off)")
        need(_finite(self.dp_max_grad_norm) and self.dp_max_grad_norm > 0,
             f"dp-max-grad-norm={self.dp_max_grad_norm}: must be > 0")
        need(_finite(self.dp_server_max_grad_norm) and self.dp_server_max_grad_norm > 0,
             f"dp-server-max-grad-norm={self.dp_server_max_grad_norm}: must be > 0")
        need(_finite(self.dp_delta) and 0 < self.dp_delta < 1, f"dp-delta={self.dp_delta}: must be in (0, 1)")
        need(not (self.dp_noise_multiplier > 0 and self.dp_target_epsilon > 0),
             "dp-noise-multiplier and dp-target-epsilon are both set: give one (the other 0)")
        need(not (self.act_noise_multiplier > 0 and self.act_clip_norm <= 0),
             "act-noise-multiplier > 0 needs act-clip-norm > 0 (the noise is relative to the clip norm)")
        need(_finite(self.dchi_token_clip) and self.dchi_token_clip > 0,
             f"dchi-token-clip={self.dchi_token_clip}: must be > 0")
        need(not (self.dchi_eta > 0 and self.split_layer != 0),
             f"dchi-eta (d_chi noise on token embeddings) needs split-layer=0 (the client then sends the "
             f"embeddings); got split-layer={self.split_layer}: use act-clip-norm/act-noise-multiplier instead")
        need(not (self.dchi_eta > 0 and self.act_clip_norm > 0),
             "dchi-eta and act-clip-norm are two activation mechanisms: choose one")
        need(self.label_protection in LABEL_PROTECTIONS,
             f"label-protection={self.label_protection!r}: allowed {', '.join(LABEL_PROTECTIONS)}")
        need(not (self.task == "causal-lm" and self.label_protection == "randomized-response"),
             "label-protection='randomized-response' is for class labels; for task='causal-lm' the labels are "
             "the text itself: use 'u-shape' (the default) to keep them on the client")
        need(not (self.label_protection == "randomized-response" and not self.label_epsilon > 0),
             "label-protection='randomized-response' needs label-epsilon > 0")
        need(not (self.max_epsilon > 0 and not self.dp_enabled),
             "max-epsilon needs DP-SGD (dp-noise-multiplier or dp-target-epsilon): without it the released "
             "model has no privacy guarantee to budget")
        need(not (self.max_activation_epsilon > 0 and not (self.act_noise_multiplier > 0 or self.dchi_eta > 0)),
             "max-activation-epsilon needs act-noise-multiplier > 0 or dchi-eta > 0")
        need(self.bottleneck_dim >= 0, f"bottleneck-dim={self.bottleneck_dim}: must be >= 0 (0 = off; at most "
             "the model's hidden size, checked when the model is loaded)")
        need(self.activation_reuse in ACTIVATION_REUSE,
             f"activation-reuse={self.activation_reuse!r}: allowed {', '.join(ACTIVATION_REUSE)}")
        need(not (self.activation_reuse != "none" and not self.activation_noise_enabled),
             f"activation-reuse={self.activation_reuse!r} reuses noised releases: it needs act-noise-multiplier > 0 "
             "or dchi-eta > 0")
        need(not (self.activation_reuse != "none" and (self.split_layer != 0 or self.bottleneck_dim > 0)),
             f"activation-reuse={self.activation_reuse!r} needs a client bottom that does not train (split-layer=0 "
             f"and bottleneck-dim=0; got split-layer={self.split_layer}, bottleneck-dim={self.bottleneck_dim}): "
             "resending one noise draw over a changing representation would leak the change")
        need(_finite(self.dcor_weight) and self.dcor_weight >= 0,
             f"dcor-weight={self.dcor_weight}: must be a finite number >= 0 (0 = off)")
        need(_finite(self.dchi_importance) and self.dchi_importance >= 0,
             f"dchi-importance={self.dchi_importance}: must be a finite number >= 0 (0 = off)")
        need(not (self.dchi_importance > 0 and not (self.dchi_eta > 0 and self.task == "classification")),
             "dchi-importance > 0 allocates d_chi noise by class-label log-odds: it needs dchi-eta > 0 and "
             "task='classification'")
        need(not (self.dchi_importance > 0 and self.max_activation_epsilon > 0),
             "dchi-importance > 0 has no activation epsilon (the noise scale depends on the token), so "
             "max-activation-epsilon cannot be enforced: set one of them to 0")
        need(not (self.dcor_weight > 0 and self.split_layer == 0 and self.bottleneck_dim == 0),
             "dcor-weight > 0 needs something the client trains below the cut (split-layer > 0 or bottleneck-dim > 0):"
             " at split-layer 0 without a bottleneck what is sent does not depend on any trainable weight")
        need(self.accountant in ACCOUNTANTS, f"accountant={self.accountant!r}: allowed {', '.join(ACCOUNTANTS)}")

    @property
    def dp_enabled(self) -> bool:
        """Whole-model DP-SGD (client adapter and server half) is on."""
        return self.dp_noise_multiplier > 0 or self.dp_target_epsilon > 0

    @property
    def u_shape(self) -> bool:
        """The U-shaped split: head and loss on the client, only the middle blocks on the server."""
        return self.label_protection == "u-shape"

    @property
    def activation_noise_enabled(self) -> bool:
        return self.act_noise_multiplier > 0 or self.dchi_eta > 0

    @property
    def private(self) -> bool:
        """Any local privacy mechanism is on (clients must then report their privacy events)."""
        return self.dp_enabled or self.activation_noise_enabled or self.label_protection == "randomized-response"

    @property
    def exchanges_per_round(self) -> int:
        """Number of activation chunks a client sends per round (ceil(local-steps / exchange-batches))."""
        return -(-self.local_steps // self.exchange_batches)

    def to_dict(self) -> dict[str, Any]:
        """The resolved config with public (hyphenated) key names, as written to the run directory."""
        out = {}
        for key, value in asdict(self).items():
            if isinstance(value, tuple):
                value = ",".join(value)
            out[key.replace("_", "-")] = value
        return out


def parse_strategy_options(text: str) -> dict[str, str]:
    """Parse ``strategy-options`` (``"key=value,key2=value2"``; values are strings, no commas) into a dict.

    Raises :class:`ConfigError` for an entry without ``=``, an empty key, or a key given twice.
    """
    options: dict[str, str] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"strategy-options entry {part!r}: expected key=value "
                              "(entries separated by commas, e.g. 'server-lr=0.5,momentum=0.9')")
        if key in options:
            raise ConfigError(f"strategy-options: key {key!r} given twice")
        options[key] = value.strip()
    return options


def parse_tracking(text: str) -> tuple[str, ...]:
    """Parse ``tracking`` (``"none"`` or a comma-separated subset of :data:`TRACKERS`) into tracker names
    (``()`` for ``"none"``). Raises :class:`ConfigError` naming the bad entry and what is allowed."""
    names = [part.strip().lower() for part in text.split(",")]
    if names == ["none"]:
        return ()
    allowed = f"allowed 'none' or a comma-separated list of {', '.join(TRACKERS)} (e.g. 'tensorboard,mlflow')"
    for name in names:
        if name not in TRACKERS:
            raise ConfigError(f"tracking={text!r}: unknown tracker {name!r}; {allowed}")
    if len(set(names)) != len(names):
        raise ConfigError(f"tracking={text!r}: a tracker is named twice; {allowed}")
    return tuple(names)


def _valid_address(text: str) -> bool:
    if not text:
        return True
    host, sep, port = text.rpartition(":")
    return bool(sep) and port.isdigit() and 0 <= int(port) <= 65535 and bool(host.strip("[]"))


def _finite(value: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _coerce(key: str, value: Any, annotation: str) -> Any:
    """Convert a TOML scalar to the field's type, or raise ConfigError saying what was expected."""
    if annotation == "tuple[str, ...]":
        if not isinstance(value, str):
            raise ConfigError(f"{key}={value!r}: expected a comma-separated string")
        return tuple(part.strip() for part in value.split(",") if part.strip())
    if annotation == "str":
        if not isinstance(value, str):
            raise ConfigError(f"{key}={value!r}: expected a string")
        return value
    if annotation == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}={value!r}: expected an integer")
        return value
    if annotation == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}={value!r}: expected a number")
        return float(value)
    if annotation == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{key}={value!r}: expected true or false")
        return value
    raise TypeError(f"unsupported config field type {annotation!r} for {key}")
