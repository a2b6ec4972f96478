"""Strategy lookup by the run-config key ``strategy``: built-in names, entry points, or a dotted path.

Plugin contract. ``strategy`` names a *plugin*, found, in this order, as

1. a built-in name (:data:`BUILTINS`); ``auto`` means :func:`default_strategy_name`;
2. a dotted path ``"package.module:Name"``;
3. an entry point named ``strategy`` in the group ``fedguard.strategies``.

``strategy-options = "key=value,..."`` is parsed into ``options`` (a dict of strings). The plugin is built
according to what it is:

* a **FedGuard strategy class** (a subclass of :class:`strategies.base.AdapterStrategy`, or any class whose
  constructor's first two parameters are ``config`` and ``options``): ``Cls(config, options)``;
* a **plain Flower strategy class** (any other subclass of ``flwr.serverapp.strategy.Strategy``, e.g. a
  ``FedAvg`` subclass or ``flwr.serverapp.strategy:FedProx`` itself): ``Cls(**kwargs)`` where each option
  becomes a keyword argument, hyphens turned into underscores (``min-train-nodes=3`` -> ``min_train_nodes=3``)
  and values converted to ``bool`` / ``int`` / ``float`` where they parse as such (:func:`option_kwargs`).
  The run config's sampling (``fraction-train``, ``min-fit-clients``) fills ``fraction_train``,
  ``min_train_nodes`` and ``min_available_nodes`` when the constructor takes them and the options do not;
* a **factory function** ``factory(config: RunConfig, options: dict[str, str]) -> Strategy``.

An unknown name, an import failure, a class that is not a Flower ``Strategy``, a constructor that rejects an
option, or a factory that does not return a Flower ``Strategy`` raises :class:`UnknownStrategyError` (a
:class:`fedguard.config.ConfigError`) naming the plugin, before any training starts.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points

from flwr.serverapp.strategy import Strategy

from fedguard.config import ConfigError, RunConfig, parse_strategy_options
from strategies.base import AdapterStrategy

ENTRY_POINT_GROUP = "fedguard.strategies"
AUTO = "auto"

StrategyFactory = Callable[[RunConfig, dict[str, str]], Strategy]
OptionValue = bool | int | float | str

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
    """The plugin ``name`` refers to (a class or a factory function; :func:`build_strategy` builds it);
    raises :class:`UnknownStrategyError` listing the available names."""
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
                                   "a Flower Strategy subclass, an AdapterStrategy subclass, or a function taking "
                                   "(config, options) and returning a Flower Strategy")
    return target  # type: ignore[return-value]


def build_strategy(config: RunConfig) -> Strategy:
    """The run's Flower ``Strategy``, built from ``config.strategy`` and ``config.strategy_options``
    (see the module docstring for how each kind of plugin is built) and checked to be a Flower ``Strategy``."""
    plugin = resolve_factory(config.strategy, config)
    options = parse_strategy_options(config.strategy_options)
    if isinstance(plugin, type) and not _takes_config_and_options(plugin):
        if not issubclass(plugin, Strategy):
            raise UnknownStrategyError(
                f"strategy={config.strategy!r} names the class {plugin.__qualname__}, which is not a "
                "flwr.serverapp.strategy.Strategy subclass; expected a Flower Strategy subclass (options become "
                "its keyword arguments), an AdapterStrategy subclass, or a factory function (config, options) "
                "-> Strategy")
        strategy = _construct_flower_strategy(plugin, config, options)
    else:
        try:
            strategy = plugin(config, options)
        except ConfigError:
            raise
        except Exception as err:  # noqa: BLE001 - a plugin's failure is reported naming the plugin
            name = getattr(plugin, "__qualname__", repr(plugin))
            raise UnknownStrategyError(f"strategy={config.strategy!r}: building it as {name}(config, options) "
                                       f"failed: {type(err).__name__}: {err} (a factory takes the RunConfig and "
                                       "the strategy-options dict and returns a Flower Strategy)") from err
    if not isinstance(strategy, Strategy):
        raise UnknownStrategyError(f"strategy={config.strategy!r} built a {type(strategy).__name__}, "
                                   "not a flwr.serverapp.strategy.Strategy")
    return strategy


def option_kwargs(options: Mapping[str, str]) -> dict[str, OptionValue]:
    """``strategy-options`` as keyword arguments: ``min-train-nodes`` -> ``min_train_nodes``; ``"true"`` /
    ``"false"`` (any case) -> bool, then int, then float where the text parses as such, else the string."""
    return {key.replace("-", "_"): _option_value(value) for key, value in options.items()}


def _option_value(text: str) -> OptionValue:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


def _takes_config_and_options(cls: type) -> bool:
    """FedGuard's own strategy classes are constructed as ``Cls(config, options)``."""
    if issubclass(cls, AdapterStrategy):
        return True
    try:
        names = list(inspect.signature(cls).parameters)
    except (TypeError, ValueError):  # no introspectable signature: treat it as a keyword-argument class
        return False
    return names[:2] == ["config", "options"]


def _construct_flower_strategy(cls: type[Strategy], config: RunConfig, options: Mapping[str, str]) -> Strategy:
    """``cls(**kwargs)`` from the options (plus the run's sampling where accepted); errors name the plugin."""
    kwargs = option_kwargs(options)
    where = f"strategy={config.strategy!r} ({cls.__qualname__})"
    try:
        signature = inspect.signature(cls)
    except (TypeError, ValueError):
        signature = None
    if signature is not None:
        params = signature.parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        accepted = [n for n, p in params.items()
                    if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
        unknown = sorted(set(kwargs) - set(accepted)) if not takes_any else []
        if unknown:
            given = ", ".join(f"{k.replace('_', '-')!r} (keyword {k})" for k in unknown)
            raise UnknownStrategyError(f"{where}: strategy-options {given} not accepted by {cls.__qualname__}; "
                                       f"its keyword arguments are: {', '.join(accepted) or 'none'} (write them "
                                       "with hyphens or underscores in strategy-options)")
        sampling = {"fraction_train": config.fraction_train, "min_train_nodes": config.min_fit_clients,
                    "min_available_nodes": config.min_fit_clients}
        for key, value in sampling.items():
            if key in params and key not in kwargs:
                kwargs[key] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise UnknownStrategyError(f"{where}: {cls.__qualname__}(**{kwargs!r}) failed: {err} (check "
                                   "strategy-options)") from err
