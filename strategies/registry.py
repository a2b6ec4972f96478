"""Strategy lookup by the run-config key ``strategy``: built-in names, entry points, or a dotted path.

Plugin contract. A strategy is referenced by a *factory*: any callable
``factory(config: fedguard.config.RunConfig, options: dict[str, str]) -> flwr.serverapp.strategy.Strategy``
(a subclass of :class:`strategies.base.AdapterStrategy` is such a callable; so is a function returning a
plain Flower strategy such as ``FedProx``). ``options`` is ``strategy-options`` parsed into a dict of strings.
A factory is found, in this order, as

1. a built-in name (:data:`BUILTINS`); ``auto`` means :func:`default_strategy_name`;
2. a dotted path ``"package.module:Name"``;
3. an entry point named ``strategy`` in the group ``fedguard.strategies``.

An unknown name, an import failure, or a factory that does not return a Flower ``Strategy`` raises
:class:`UnknownStrategyError` (a :class:`fedguard.config.ConfigError`) before any training starts.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.metadata import entry_points

from flwr.serverapp.strategy import Strategy

from fedguard.config import ConfigError, RunConfig, parse_strategy_options

ENTRY_POINT_GROUP = "fedguard.strategies"
AUTO = "auto"

StrategyFactory = Callable[[RunConfig, dict[str, str]], Strategy]

BUILTINS: dict[str, str] = {
    "fedavg": "strategies.fedavg:FedAvgAdapters",
    "ffa-lora": "strategies.ffa_lora:FfaLora",
    "svd": "strategies.svd:SvdLora",
    "median": "strategies.robust:CoordinateMedian",
    "trimmed-mean": "strategies.robust:TrimmedMean",
}


class UnknownStrategyError(ConfigError):
    """The ``strategy`` run-config value names no loadable strategy; the message lists the available ones."""


def default_strategy_name(config: RunConfig) -> str:
    """The strategy ``strategy = "auto"`` selects: ``ffa-lora`` under DP-SGD (the noise then enters one linear
    factor only, and averaging B with A fixed is exact), ``fedavg`` otherwise."""
    return "ffa-lora" if config.dp_enabled else "fedavg"


def _plugin_entry_points() -> dict[str, object]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available_strategies() -> list[str]:
    """Built-in names, then installed plugin names (entry points), sorted; ``auto`` not included."""
    return list(BUILTINS) + sorted(set(_plugin_entry_points()) - set(BUILTINS))


def _load_path(path: str, what: str) -> object:
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise UnknownStrategyError(f"strategy={what!r}: a dotted path must look like 'package.module:Name'")
    try:
        target: object = importlib.import_module(module_name)
        for part in attr.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as err:
        raise UnknownStrategyError(f"strategy={what!r}: cannot load {path!r}: {err}") from err
    return target


def resolve_factory(name: str, config: RunConfig | None = None) -> StrategyFactory:
    """The factory for ``name``; raises :class:`UnknownStrategyError` listing the available names."""
    if name == AUTO:
        name = default_strategy_name(config if config is not None else RunConfig())
    if name in BUILTINS:
        target = _load_path(BUILTINS[name], name)
    elif ":" in name:
        target = _load_path(name, name)
    else:
        plugins = _plugin_entry_points()
        if name not in plugins:
            raise UnknownStrategyError(
                f"strategy={name!r} is unknown; available: {', '.join(available_strategies())}, {AUTO} "
                f"(or a dotted path 'package.module:Name', or a plugin registered in the entry-point group "
                f"{ENTRY_POINT_GROUP!r})")
        try:
            target = plugins[name].load()  # type: ignore[attr-defined]
        except Exception as err:  # noqa: BLE001 - any plugin import failure is reported the same way
            raise UnknownStrategyError(f"strategy={name!r}: plugin {plugins[name].value!r} "  # type: ignore[attr-defined]
                                       f"failed to load: {err}") from err
    if not callable(target):
        raise UnknownStrategyError(f"strategy={name!r} resolves to {target!r}, which is not callable; expected "
                                   "a class or function taking (config, options) and returning a Flower Strategy")
    return target  # type: ignore[return-value]


def build_strategy(config: RunConfig) -> Strategy:
    """The run's Flower ``Strategy``: ``factory(config, options)`` for ``config.strategy``."""
    factory = resolve_factory(config.strategy, config)
    strategy = factory(config, parse_strategy_options(config.strategy_options))
    if not isinstance(strategy, Strategy):
        raise UnknownStrategyError(f"strategy={config.strategy!r} built a {type(strategy).__name__}, "
                                   "not a flwr.serverapp.strategy.Strategy")
    return strategy
