"""Cut a Hugging Face task model into a client half and a server half, for any architecture whose blocks
run in sequence.

The client half holds the embeddings and the first ``split_layer`` transformer blocks; the server half
holds the remaining blocks, what follows them (final norm, pooler) and the task head. Composition is
exact: ``server(client(input_ids, mask), mask)`` equals the unsplit model's logits (fp32, to ~1e-6).

Nothing is looked up in a table of families: :func:`family_of` finds the parts in the loaded model itself.

- the base model: the task model's ``base_model_prefix`` attribute;
- the blocks: the one ``nn.ModuleList`` inside it with ``config.num_hidden_layers`` entries;
- the embeddings and the top: one probe forward pass with hooks on the modules that sit next to the block
  list (the base model's children and those of every container on the way to the blocks). A module that
  runs before the blocks and feeds the hidden states that enter block 0 is part of the embeddings; one that
  runs after the blocks and reads their output is part of the top (final norm, output projection, pooler).
  The probe also checks that the blocks run once each, in order, with nothing in between;
- the head: every child of the task model besides the base model, run by the task model's own ``forward``.

Both halves are *views* over the one loaded model: they share its modules (no weights are copied) and keep
its module names, including the original block indices, so a LoRA adapter trained on a half has the same
parameter names as a LoRA adapter on the whole model (the two halves' adapters merge into one adapter for
the unsplit model). Each half runs the base model's own ``forward`` (masks, rotary embeddings and position
ids are computed by ``transformers`` itself on both sides); only the pieces that must not run twice are
replaced by parameter-free stand-ins: on the client the top, on the server the embeddings (a stand-in that
passes the received hidden states through, or adds nothing for a position table). The server runs the
task model's own ``forward`` for the head, with the client's hidden states as ``inputs_embeds`` and
placeholder token ids derived from the padding mask (last-token pooling finds the last real token).

What crosses the split: the hidden states after block ``split_layer`` (``[batch, seq, hidden]``) and the
2-D padding mask (``[batch, seq]``, 1 = real token). Position ids are ``0..seq-1`` on both sides (the
``transformers`` default), so they need not be sent; no key/value cache is ever built or sent.
"""

from __future__ import annotations

import copy
import functools
import inspect
import re
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn


class SplitError(ValueError):
    """The model cannot be split as asked (architecture without a plain stack of blocks, or split index out of
    range). The message is one line that names the reason."""


@dataclass(frozen=True)
class Slot:
    """A module of the base model (dotted ``path``) on the hidden-state path outside the blocks.

    ``carries``: which argument carries the hidden states (a position or a keyword); ``None`` for a source
    whose output is added to them (a position-embedding table), which a stand-in replaces by zero.
    """

    path: str
    carries: int | str | None


@dataclass(frozen=True)
class Family:
    """Where a loaded task model keeps its parts, as found by :func:`family_of`.

    Invariants: ``blocks`` names a ModuleList of exactly ``num_blocks`` blocks that the base model runs once
    each, in order, with nothing in between; ``embedding`` are the modules that run before the blocks and
    feed block 0, ``top`` those that run after them and read their output, in call order; ``head`` are the
    task model's children besides the base model.
    """

    name: str  # config.model_type
    base: str  # attribute of the task model holding the base model
    blocks: str  # path inside the base model to the ModuleList of blocks
    num_blocks: int
    embedding: tuple[Slot, ...]  # replaced on the server half
    token_embeddings: str | None  # path of get_input_embeddings(); the server half has none
    top: tuple[Slot, ...]  # replaced on the client half (and on the U-shaped server half)
    head: tuple[str, ...]
    block_input: int | str  # how a block receives the hidden states
    block_output: int  # 0: a block returns a tensor; k: a tuple of k items, the hidden states first
    default_lora_targets: tuple[str, ...]  # empty when none can be inferred
    has_use_cache: bool  # the base model's forward takes use_cache (the halves pass False)


_FAMILIES: weakref.WeakKeyDictionary[nn.Module, Family] = weakref.WeakKeyDictionary()
_NO_TOKENS = "the server half has no token embeddings; pass the client's hidden states"


def family_of(model: nn.Module) -> Family:
    """The :class:`Family` of a loaded task model (or of a half built from one), found once and cached.

    Discovery runs one probe forward pass and checks that the two halves compose exactly at one cut (and in
    the U shape); it raises :class:`SplitError` naming why an architecture cannot be split.
    """
    known = getattr(model, "family", None)  # a half, or peft's wrapper around one
    if isinstance(known, Family):
        return known
    family = _FAMILIES.get(model)
    if family is None:
        family = _discover(model)
        _verify(model, family, [family.num_blocks // 2])
        _FAMILIES[model] = family
    return family


def num_blocks(model: nn.Module) -> int:
    """Number of transformer blocks of a splittable task model."""
    return family_of(model).num_blocks


# --------------------------------------------------------------------------------------------------------------
# Discovery
# --------------------------------------------------------------------------------------------------------------

def _discover(model: nn.Module) -> Family:
    """Find the parts of ``model`` (no cache, no exactness check); :class:`SplitError` names what is missing."""
    config = getattr(model, "config", None)
    name = str(getattr(config, "model_type", None) or type(model).__name__)
    if getattr(config, "is_encoder_decoder", False):
        raise SplitError(f"{name}: encoder-decoder models cannot be split (every decoder block reads the "
                         "encoder's output); use an encoder-only or decoder-only model")
    prefix = getattr(model, "base_model_prefix", "") or ""
    base = getattr(model, prefix, None) if prefix else None
    if not isinstance(base, nn.Module) or base is model:
        raise SplitError(f"{name}: {type(model).__name__} holds no base model under base_model_prefix={prefix!r}; "
                         "pass a task model (…ForSequenceClassification or …ForCausalLM)")
    count = getattr(config, "num_hidden_layers", None)
    if not isinstance(count, int) or count < 1:
        raise SplitError(f"{name}: config.num_hidden_layers={count!r}; a split needs the number of blocks")
    blocks_path = _find_blocks(base, count, name)
    blocks = base.get_submodule(blocks_path)
    head = tuple(key for key, module in model._modules.items() if key != prefix and module is not None)
    clash = [key for key in head
             if key in ("family", "split_layer", "config") or hasattr(ClientHalf, key) or hasattr(ServerHalf, key)]
    if clash:
        raise SplitError(f"{name}: head module name(s) {clash} clash with the split halves' own attributes")
    try:
        token_table = model.get_input_embeddings()
    except (AttributeError, NotImplementedError) as err:
        raise SplitError(f"{name}: {type(model).__name__} does not expose its token embeddings "
                         "(get_input_embeddings)") from err
    token_path = next((path for path, module in base.named_modules() if module is token_table and path), None)
    probe = _probe(base, blocks, blocks_path, token_table, name)
    return Family(
        name=name,
        base=prefix,
        blocks=blocks_path,
        num_blocks=count,
        embedding=probe.embedding,
        token_embeddings=token_path,
        top=probe.top,
        head=head,
        block_input=probe.block_input,
        block_output=probe.block_output,
        default_lora_targets=default_lora_targets(name, blocks[0]),
        has_use_cache=_accepts(base, "use_cache"),
    )


def _find_blocks(base: nn.Module, count: int, name: str) -> str:
    """The path of the one ModuleList of ``count`` blocks in ``base`` (not nested inside another one)."""
    lists = [(path, module) for path, module in base.named_modules() if path and isinstance(module, nn.ModuleList)]
    matches = [path for path, module in lists if len(module) == count]
    matches = [path for path in matches if not any(path.startswith(other + ".") for other in matches)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        outer = [f"{path} (length {len(module)})" for path, module in lists
                 if not any(part.isdigit() for part in path.split("."))]
        raise SplitError(
            f"{name}: {type(base).__name__} has no ModuleList with one block per layer "
            f"(config.num_hidden_layers={count}; its ModuleLists: {', '.join(outer) or 'none'}); its layers are not "
            "one plain stack of blocks (e.g. shared or grouped weights), so there is no block boundary to cut at"
        )
    raise SplitError(f"{name}: several ModuleLists of {count} blocks ({', '.join(matches)}); cannot tell which "
                     "holds the blocks")


@dataclass
class _Call:
    path: str
    phase: str  # pre | shared | between | post
    carries: int | str | None = None
    marker: torch.Tensor | None = None  # added (as zero) to the output, so that d(block input)/d(marker) exists


@dataclass(frozen=True)
class _ProbeResult:
    embedding: tuple[Slot, ...]
    top: tuple[Slot, ...]
    block_input: int | str
    block_output: int


def _siblings(base: nn.Module, blocks_path: str) -> list[tuple[str, nn.Module]]:
    """The modules next to the block list: children of the base model and of every container on the way to the
    blocks, except those containers and the block list themselves."""
    out: list[tuple[str, nn.Module]] = []
    holder, prefix = base, ""
    for part in blocks_path.split("."):
        out += [(prefix + key, child) for key, child in holder._modules.items() if key != part and child is not None]
        holder, prefix = holder._modules[part], f"{prefix}{part}."
    return out


def _tensors(obj: object) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for item in obj:
            yield from _tensors(item)


def _mark(obj: object, marker: torch.Tensor) -> object:
    """``obj`` with ``marker`` (a zero that requires grad) added to each floating-point tensor in it."""
    if isinstance(obj, torch.Tensor):
        return obj + marker.to(obj.dtype) if obj.is_floating_point() else obj
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(_mark(item, marker) for item in obj)
    if isinstance(obj, list):
        return [_mark(item, marker) for item in obj]
    return obj


def _depends_on(value: object, sources: list[torch.Tensor]) -> bool:
    """Whether any tensor in ``value`` is computed (differentiably) from one of ``sources``."""
    for tensor in _tensors(value):
        if tensor.is_floating_point() and tensor.requires_grad:
            grads = torch.autograd.grad(tensor.sum(), sources, allow_unused=True, retain_graph=True)
            if any(g is not None for g in grads):
                return True
    return False


def _carrier(args: tuple, kwargs: dict, sources: list[torch.Tensor]) -> int | str | None:
    """The first argument (position or keyword) that carries hidden states computed from ``sources``."""
    for position, value in enumerate(args):
        if _depends_on(value, sources):
            return position
    for key, value in kwargs.items():
        if _depends_on(value, sources):
            return key
    return None


def _probe_batch(config: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids ``[B, 6]`` and a padding mask; with a pad token, two rows and the second right-padded."""
    vocab = int(getattr(config, "vocab_size", 0) or 2)
    pad = getattr(config, "pad_token_id", None)
    generator = torch.Generator().manual_seed(0)
    rows = 1 if pad is None else 2
    ids = torch.randint(0, vocab, (rows, 6), generator=generator)
    mask = torch.ones(rows, 6, dtype=torch.long)
    if pad is not None:
        ids = torch.where(ids == pad, (pad + 1) % vocab, ids)
        mask[1, 4:] = 0
        ids = ids.masked_fill(mask == 0, pad)
    return ids.to(device), mask.to(device)


def _probe(base: nn.Module, blocks: nn.ModuleList, blocks_path: str, token_table: nn.Module,
           name: str) -> _ProbeResult:
    """Run the base model once as the server half would (``inputs_embeds``) and watch the blocks' neighbours."""
    weight = getattr(token_table, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise SplitError(f"{name}: the token embeddings {type(token_table).__name__} have no [vocab, width] weight")
    ids, mask = _probe_batch(base.config, weight.device)
    embeds = (0.02 * torch.randn(*ids.shape, weight.shape[1], generator=torch.Generator().manual_seed(1)))
    embeds = embeds.to(weight.device, weight.dtype).requires_grad_(True)

    count = len(blocks)
    state = {"depth": 0, "started": False, "done": 0}
    order: list[int] = []
    calls: list[_Call] = []
    open_calls: dict[str, list[_Call]] = {}
    found: dict[str, Any] = {}
    post_sources: list[torch.Tensor] = []

    def block_pre(index: int) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            if state["depth"] == 0:
                order.append(index)
                if not state["started"]:
                    if args and isinstance(args[0], torch.Tensor):
                        found["input"], found["block_input"] = args[0], 0
                    elif isinstance(kwargs.get("hidden_states"), torch.Tensor):
                        found["input"], found["block_input"] = kwargs["hidden_states"], "hidden_states"
                state["started"] = True
            state["depth"] += 1
        return hook

    def block_post(index: int) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: object) -> object:
            state["depth"] -= 1
            if state["depth"] > 0:
                return None
            state["done"] += 1
            if state["done"] != count:
                return None
            marker = torch.zeros((), device=weight.device, requires_grad=True)
            post_sources.append(marker)
            if isinstance(output, torch.Tensor):
                found["block_output"] = 0
                return output + marker.to(output.dtype)
            if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
                found["block_output"] = len(output)
                return (output[0] + marker.to(output[0].dtype), *output[1:])
            found["block_output"] = -1
            return None
        return hook

    def sibling_pre(path: str) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            if state["depth"] > 0:
                phase = "shared"
            elif not state["started"]:
                phase = "pre"
            elif state["done"] >= count:
                phase = "post"
            else:
                phase = "between"
            call = _Call(path, phase)
            if phase == "pre":
                call.carries = _carrier(args, kwargs, [embeds])
            elif phase == "post" and post_sources:
                call.carries = _carrier(args, kwargs, post_sources)
            calls.append(call)
            open_calls.setdefault(path, []).append(call)
        return hook

    def sibling_post(path: str) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: object) -> object:
            call = open_calls[path].pop()
            if call.phase != "pre" or not any(t.is_floating_point() for t in _tensors(output)):
                return None
            call.marker = torch.zeros((), device=weight.device, requires_grad=True)
            return _mark(output, call.marker)
        return hook

    handles = []
    try:
        for index, block in enumerate(blocks):
            handles.append(block.register_forward_pre_hook(block_pre(index), with_kwargs=True))
            handles.append(block.register_forward_hook(block_post(index), with_kwargs=True))
        for path, module in _siblings(base, blocks_path):
            handles.append(module.register_forward_pre_hook(sibling_pre(path), with_kwargs=True))
            handles.append(module.register_forward_hook(sibling_post(path), with_kwargs=True))
        kwargs: dict[str, Any] = {"inputs_embeds": embeds, "attention_mask": mask}
        if _accepts(base, "use_cache"):
            kwargs["use_cache"] = False
        with _EvalMode(base), torch.enable_grad():
            try:
                base(**kwargs)
            except SplitError:
                raise
            except Exception as err:
                raise SplitError(f"{name}: {type(base).__name__} cannot run on inputs_embeds, which the server half "
                                 f"needs ({type(err).__name__}: {_one_line(err)})") from err
            return _classify(name, count, order, calls, found, embeds)
    finally:
        for handle in handles:
            handle.remove()


def _classify(name: str, count: int, order: list[int], calls: list[_Call], found: dict[str, Any],
              embeds: torch.Tensor) -> _ProbeResult:
    if order != list(range(count)):
        raise SplitError(f"{name}: the blocks do not run once each, in order (call order {order[:12]}), so there is "
                         "no single point to cut at")
    between = sorted({call.path for call in calls if call.phase == "between"})
    if between:
        raise SplitError(f"{name}: {', '.join(between)} runs between the blocks (it mixes in hidden states from "
                         "before block 0), so the blocks do not run in sequence")
    if "input" not in found:
        raise SplitError(f"{name}: block 0 receives no hidden-state tensor (neither first argument nor hidden_states)")
    if found.get("block_output", -1) < 0:
        raise SplitError(f"{name}: the last block returns neither a tensor nor a tuple starting with one")
    block_in = found["input"]
    pre = [call for call in calls if call.phase == "pre" and call.marker is not None]
    on_path: set[int] = set()
    if pre and block_in.requires_grad:
        grads = torch.autograd.grad(block_in.sum(), [call.marker for call in pre], allow_unused=True,
                                    retain_graph=True)
        on_path = {id(call) for call, grad in zip(pre, grads) if grad is not None}
    if not block_in.requires_grad or not _depends_on(block_in, [embeds]):
        raise SplitError(f"{name}: the hidden states entering block 0 do not depend on inputs_embeds")
    embedding = _slots(name, [call for call in pre if id(call) in on_path], "before the blocks")
    top = _slots(name, [call for call in calls if call.phase == "post" and call.carries is not None],
                 "after the blocks")
    return _ProbeResult(embedding, top, found["block_input"], found["block_output"])


def _slots(name: str, calls: list[_Call], where: str) -> tuple[Slot, ...]:
    slots: dict[str, Slot] = {}
    for call in calls:
        slot = Slot(call.path, call.carries)
        if slots.setdefault(call.path, slot) != slot:
            raise SplitError(f"{name}: {call.path} runs several times {where}, in different roles")
    return tuple(slots.values())


_QUERY = re.compile(r"^(q|query|wq)(_proj|_lin)?$", re.IGNORECASE)
_VALUE = re.compile(r"^(v|value|wv)(_proj|_lin)?$", re.IGNORECASE)
_FUSED = re.compile(r"qkv|query_key_value|c_attn", re.IGNORECASE)


def default_lora_targets(model_type: str, block: nn.Module) -> tuple[str, ...]:
    """LoRA target module names for an architecture, given one of its blocks.

    peft's own defaults for ``model_type`` where it has them (and they exist in ``block``); else the attention's
    query and value projections found by name (``q_proj``/``v_proj``, ``query``/``value``, ``q_lin``/``v_lin``
    ...); else a fused query-key-value projection; else ``()`` (the user must name the targets).
    """
    linear = list(dict.fromkeys(path.rsplit(".", 1)[-1] for path, module in block.named_modules()
                                if path and (isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D")))
    try:
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as peft_defaults
    except ImportError:  # pragma: no cover - peft is a dependency; the fallback still works without it
        peft_defaults = {}
    known = tuple(target for target in peft_defaults.get(model_type, ()) if target in linear)
    if known:
        return known
    query = next((n for n in linear if _QUERY.match(n)), None)
    value = next((n for n in linear if _VALUE.match(n)), None)
    if query and value:
        return (query, value)
    fused = next((n for n in linear if _FUSED.search(n)), None)
    return (fused,) if fused else ()


# --------------------------------------------------------------------------------------------------------------
# Views and stand-ins
# --------------------------------------------------------------------------------------------------------------

class _IndexedBlocks(nn.ModuleList):
    """A ModuleList of consecutive blocks that keeps their original indices as module names."""

    def __init__(self, blocks: Iterable[nn.Module], start: int) -> None:
        super().__init__()
        self._modules = OrderedDict((str(start + i), block) for i, block in enumerate(blocks))

    def __getitem__(self, idx):  # type: ignore[override]
        items = list(self._modules.values())
        if isinstance(idx, slice):
            return nn.ModuleList(items[idx])
        return items[idx]


class _Passthrough(nn.Module):
    """Stand-in that returns the argument carrying the hidden states (position or keyword ``carries``).

    With ``source`` it shares that module's parameters, buffers and children (same objects, same names), so a
    half can hold a module it must not run in its own forward (the U-shaped client's final norm).
    """

    def __init__(self, carries: int | str, missing: str = "no hidden states given", source: nn.Module | None = None):
        super().__init__()
        self.carries = carries
        self.missing = missing
        if source is not None:
            self._parameters = source._parameters
            self._buffers = source._buffers
            self._modules = source._modules

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if isinstance(self.carries, int):
            value = args[self.carries] if self.carries < len(args) else None
        else:
            value = kwargs.get(self.carries)
        if value is None:
            raise RuntimeError(self.missing)
        return value


class _Zero(nn.Module):
    """Server-side stand-in for a table whose output is added to the hidden states (already added on the
    client): a zero scalar, which keeps the dtype of what it is added to."""

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        device = next((t.device for t in _tensors([*args, *kwargs.values()])), None)
        return torch.zeros((), dtype=torch.get_default_dtype(), device=device)


class _NoTokenEmbeddings(nn.Module):
    """Server-side stand-in for a token-embedding table the server half must never use."""

    def forward(self, *_: object, **__: object) -> torch.Tensor:
        raise RuntimeError(_NO_TOKENS)


class _SkipBlock(nn.Module):
    """The only block of a view that holds none: returns its hidden-state input unchanged, shaped like a real
    block's output, and carries the plain attributes of the block it stands next to (e.g. its attention type),
    which the base model's loop may read. It has no parameters."""

    def __init__(self, template: nn.Module, family: Family) -> None:
        super().__init__()
        for key, value in template.__dict__.items():
            if not key.startswith("_") and key != "training" and not isinstance(value, (nn.Module, torch.Tensor)):
                self.__dict__[key] = value
        self.block_input = family.block_input
        self.block_output = family.block_output

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        carries = self.block_input
        hidden = args[carries] if isinstance(carries, int) else kwargs[carries]
        return hidden if self.block_output == 0 else (hidden, *([None] * (self.block_output - 1)))


def _view(module: nn.Module) -> nn.Module:
    """A shallow copy of ``module`` whose child modules can be replaced without touching the original."""
    clone = copy.copy(module)
    clone._modules = OrderedDict(module._modules)
    clone._parameters = OrderedDict(module._parameters)
    clone._buffers = OrderedDict(module._buffers)
    return clone


class _ViewTree:
    """A view of a module tree in which modules at given paths are replaced; each container on the way to a
    replaced module is shallow-copied once, so the original tree stays whole."""

    def __init__(self, root: nn.Module) -> None:
        self.root = _view(root)
        self._copies: dict[str, nn.Module] = {"": self.root}

    def container(self, path: str) -> nn.Module:
        if path not in self._copies:
            parent_path, _, key = path.rpartition(".")
            parent = self.container(parent_path)
            parent._modules[key] = self._copies[path] = _view(parent._modules[key])
        return self._copies[path]

    def put(self, path: str, module: nn.Module) -> None:
        parent_path, _, key = path.rpartition(".")
        self.container(parent_path)._modules[key] = module

    def copies(self) -> Iterable[nn.Module]:
        return self._copies.values()


def _sliced_config(config: Any, start: int, stop: int, count: int) -> Any:
    """A copy of ``config`` for a view with blocks ``[start, stop)`` (``count`` of them, 1 for a skip block):
    per-layer settings (e.g. Qwen2's ``layer_types``) line up with the view's blocks."""
    sliced = copy.copy(config)
    sliced.num_hidden_layers = count
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        sliced.layer_types = list(layer_types)[start:stop] if stop > start else [list(layer_types)[max(start - 1, 0)]]
    return sliced


def _base_view(task_model: nn.Module, family: Family, start: int, stop: int, *, embed: bool, top: str) -> nn.Module:
    """The base model with only blocks ``[start, stop)``.

    ``embed``: keep the embeddings (client) or replace them by stand-ins fed through ``inputs_embeds`` (server).
    ``top``: ``"keep"`` the modules after the blocks, ``"drop"`` them (parameter-free passthrough) or
    ``"bypass"`` them (passthrough that still holds their parameters, under their names).
    """
    base = getattr(task_model, family.base)
    tree = _ViewTree(base)
    originals = list(base.get_submodule(family.blocks))
    blocks: list[nn.Module] = originals[start:stop]
    if not blocks:  # some base models cannot loop over zero blocks (DeBERTa-v2): a parameter-free skip block
        blocks = [_SkipBlock(originals[max(start - 1, 0)], family)]
    tree.put(family.blocks, _IndexedBlocks(blocks, start))
    if not embed:
        replaced = []
        for slot in family.embedding:
            stand_in = _Zero() if slot.carries is None else _Passthrough(slot.carries, _NO_TOKENS)
            tree.put(slot.path, stand_in)
            replaced.append(slot.path)
        token = family.token_embeddings
        if token and not any(token == path or token.startswith(path + ".") for path in replaced):
            tree.put(token, _NoTokenEmbeddings())
    if top != "keep":
        for slot in family.top:
            source = base.get_submodule(slot.path) if top == "bypass" else None
            tree.put(slot.path, _Passthrough(slot.carries, source=source))  # type: ignore[arg-type]
    config = _sliced_config(base.config, start, stop, len(blocks))
    for container in tree.copies():
        if getattr(container, "config", None) is base.config:
            container.config = config
    if not embed:  # a task model may call the base model or a container inside it (OPT: model.decoder)
        for container in tree.copies():
            if {"input_ids", "inputs_embeds"} <= _forward_params(type(container)):
                container.forward = _embeds_only(container)
    return tree.root


def _embeds_only(view: nn.Module) -> Callable[..., Any]:
    """``view.forward`` that ignores ``input_ids`` when ``inputs_embeds`` are given (the task model passes the
    placeholder ids it pools with to the base model too)."""
    forward = type(view).forward.__get__(view, type(view))
    first = next(iter(inspect.signature(forward).parameters), None)

    @functools.wraps(forward)
    def call(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("inputs_embeds") is not None:  # transformers' task models pass inputs_embeds by keyword
            if args and first == "input_ids":
                args = (None, *args[1:])
            if "input_ids" in kwargs:
                kwargs["input_ids"] = None
        return forward(*args, **kwargs)

    return call


def _task_view(task_model: nn.Module, family: Family, base_view: nn.Module) -> nn.Module:
    view = _view(task_model)
    view._modules[family.base] = base_view
    return view


@functools.lru_cache(maxsize=None)
def _forward_params(cls: type) -> frozenset[str]:
    return frozenset(inspect.signature(cls.forward).parameters)


def _accepts(module: nn.Module, name: str) -> bool:
    return name in _forward_params(type(module))


def _placeholder_ids(attention_mask: torch.Tensor, config: Any) -> torch.Tensor:
    """Token ids that are the pad token exactly where the mask is 0 (what last-token pooling looks at)."""
    pad = getattr(config, "pad_token_id", None)
    pad = 0 if pad is None else int(pad)
    return torch.where(attention_mask.bool(), 1 if pad == 0 else 0, pad).long()


class _Half(nn.Module):
    """What both halves share: the family, the split index and, for a half with the head, a task-model view
    (``_runner``, not a registered submodule) that runs the task model's own ``forward``."""

    def __init__(self, task_model: nn.Module, family: Family | None, split_layer: int) -> None:
        super().__init__()
        self.family = family if family is not None else family_of(task_model)
        self.split_layer = split_layer
        self.config = task_model.config
        self.__dict__["_runner"] = None

    @property
    def base(self) -> nn.Module:
        return getattr(self, self.family.base)

    def _hold_head(self, task_model: nn.Module, base_view: nn.Module) -> None:
        for name in self.family.head:
            self.add_module(name, task_model._modules[name])
        self.__dict__["_runner"] = _task_view(task_model, self.family, base_view)

    def _base_kwargs(self) -> dict[str, Any]:
        return {"use_cache": False} if self.family.has_use_cache else {}

    def _task_logits(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The task model's own forward on ``hidden`` (the input of the runner's first block)."""
        runner = self._runner
        for name in self.family.head:  # the head as held now (peft may have wrapped it)
            runner._modules[name] = self._modules[name]
        runner.training = self.training
        kwargs = {"use_cache": False} if _accepts(runner, "use_cache") else {}
        out = runner(input_ids=_placeholder_ids(attention_mask, self.config), inputs_embeds=hidden,
                     attention_mask=attention_mask, **kwargs)
        return out.logits if hasattr(out, "logits") else out[0]


class ClientHalf(_Half):
    """Embeddings + blocks ``[0, split_layer)``; maps token ids to the hidden states that cross the split.

    With ``with_head`` (the U-shaped split) it also holds the top of the network — what follows the blocks
    (final norm, pooler) and the task head, under their own names — applied by :meth:`head` to the hidden
    states the server returns, so labels, logits and the loss never leave the client.
    """

    def __init__(self, task_model: nn.Module, split_layer: int, with_head: bool = False, *,
                 family: Family | None = None) -> None:
        super().__init__(task_model, family, split_layer)
        family = self.family
        self.add_module(family.base, _base_view(task_model, family, 0, split_layer, embed=True,
                                                top="bypass" if with_head else "drop"))
        self.__dict__["_head_base"] = None
        if with_head:
            head_base = _base_view(task_model, family, family.num_blocks, family.num_blocks, embed=False, top="keep")
            self.__dict__["_head_base"] = head_base
            self._hold_head(task_model, head_base)
        self.add_module("cut_down", None)  # the bottleneck's H -> k map (fedguard.model.bottleneck), if any

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Hidden states ``[batch, seq, hidden]`` after block ``split_layer`` (before any final norm), or
        ``[batch, seq, k]`` through the bottleneck's ``cut_down`` when there is one."""
        hidden = self.base(input_ids=input_ids, attention_mask=attention_mask, **self._base_kwargs()).last_hidden_state
        return hidden if self.cut_down is None else self.cut_down(hidden)

    @property
    def cut_width(self) -> int:
        """Width of what crosses the split: the bottleneck's k, else the hidden size."""
        return self.cut_down.out_features if self.cut_down is not None else int(self.config.hidden_size)

    def head(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """U-shaped split only: task logits from the hidden states after the last block (pre final norm)."""
        if self._runner is None:
            raise RuntimeError("this client half has no head (built without with_head)")
        self._head_base.train(self.training)
        return self._task_logits(hidden, attention_mask)


class ServerHalf(_Half):
    """Blocks ``[split_layer, N)`` + what follows them + the task head; maps split hidden states to logits.

    Without ``with_head`` (the U-shaped split) it is the middle of the network only: blocks
    ``[split_layer, N)``, returning the hidden states after the last block, before any final norm.
    """

    def __init__(self, task_model: nn.Module, split_layer: int, with_head: bool = True, *,
                 family: Family | None = None) -> None:
        super().__init__(task_model, family, split_layer)
        family = self.family
        view = _base_view(task_model, family, split_layer, family.num_blocks, embed=False,
                          top="keep" if with_head else "drop")
        self.add_module(family.base, view)
        if with_head:
            self._hold_head(task_model, view)
        self.add_module("cut_up", None)  # the bottleneck's k -> H map (fedguard.model.bottleneck), if any

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Task logits: ``[batch, num_labels]`` (classification) or ``[batch, seq, vocab]`` (causal LM);
        without a head, the hidden states ``[batch, seq, hidden]`` after the last block. With a bottleneck,
        ``hidden`` is ``[batch, seq, k]`` and ``cut_up`` maps it back to the hidden size first."""
        if self.cut_up is not None:
            hidden = self.cut_up(hidden)
        if self._runner is not None:
            return self._task_logits(hidden, attention_mask)
        return self.base(inputs_embeds=hidden, attention_mask=attention_mask, **self._base_kwargs()).last_hidden_state


def split_model(task_model: nn.Module, split_layer: int, u_shape: bool = False, bottleneck_dim: int = 0,
                seed: int = 0) -> tuple[ClientHalf, ServerHalf]:
    """Split ``task_model`` after block ``split_layer`` (0 = only the embeddings on the client).

    ``u_shape``: the client half also keeps the top and the task head (:meth:`ClientHalf.head`) and the
    server half is the middle blocks only, so ``client.head(server(client(x)))`` is the model's logits.
    ``bottleneck_dim`` k > 0: a learned ``H → k → H`` bottleneck at the cut (:mod:`fedguard.model.bottleneck`,
    initialised from ``seed``); the composition is then exact only up to its (initially projecting) maps.

    Raises :class:`SplitError` for an architecture that cannot be split or ``split_layer`` outside
    ``[0, num_blocks]``.
    """
    family = family_of(task_model)
    _check_range(split_layer, family.num_blocks, type(task_model).__name__)
    client = ClientHalf(task_model, split_layer, with_head=u_shape, family=family)
    server = ServerHalf(task_model, split_layer, with_head=not u_shape, family=family)
    if bottleneck_dim:
        from fedguard.model.bottleneck import add_bottleneck  # no cycle: bottleneck imports torch only

        add_bottleneck(client, server, int(task_model.config.hidden_size), bottleneck_dim, seed)
    return client, server


def _check_range(split_layer: object, total: int, what: str) -> None:
    if isinstance(split_layer, bool) or not isinstance(split_layer, int) or not 0 <= split_layer <= total:
        raise SplitError(f"split-layer={split_layer!r} is out of range for {what} with {total} blocks: "
                         f"allowed 0..{total}")


# --------------------------------------------------------------------------------------------------------------
# Exactness checks
# --------------------------------------------------------------------------------------------------------------

class _EvalMode:
    """Context: every submodule in eval mode (no dropout); each one's own mode is restored afterwards."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.modes: list[tuple[nn.Module, bool]] = []

    def __enter__(self) -> None:
        self.modes = [(m, m.training) for m in self.module.modules()]
        self.module.eval()

    def __exit__(self, *_: object) -> None:
        for module, mode in self.modes:
            module.training = mode


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:300]


def _logits(out: Any) -> torch.Tensor:
    return out.logits if hasattr(out, "logits") else out[0]


def _verify(model: nn.Module, family: Family, cuts: Iterable[int]) -> None:
    """Raise :class:`SplitError` unless the halves compose to the unsplit logits at each cut (plain and U)."""
    weight = next((p for p in model.parameters()), None)
    device = weight.device if weight is not None else torch.device("cpu")
    ids, mask = _probe_batch(model.config, device)
    kwargs = {"use_cache": False} if _accepts(model, "use_cache") else {}
    with _EvalMode(model), torch.no_grad():
        try:
            reference = _logits(model(input_ids=ids, attention_mask=mask, **kwargs))
        except Exception as err:
            raise SplitError(f"{family.name}: the unsplit model does not run on a probe batch "
                             f"({type(err).__name__}: {_one_line(err)})") from err
        low_precision = reference.dtype in (torch.float16, torch.bfloat16)
        tolerance = (1e-2 if low_precision else 1e-4) * max(1.0, float(reference.abs().max()))
        for cut in cuts:
            for u_shape in (False, True):
                try:
                    client = ClientHalf(model, cut, with_head=u_shape, family=family)
                    server = ServerHalf(model, cut, with_head=not u_shape, family=family)
                    logits = server(client(ids, mask), mask)
                    if u_shape:
                        logits = client.head(logits, mask)
                except Exception as err:
                    raise SplitError(f"{family.name}: the halves cut at split-layer {cut}{' (U-shape)' * u_shape} "
                                     f"fail to run ({type(err).__name__}: {_one_line(err)})") from err
                gap = float((logits.float() - reference.float()).abs().max()) if logits.shape == reference.shape \
                    else float("inf")
                if not gap <= tolerance:
                    raise SplitError(
                        f"{family.name}: the halves cut at split-layer {cut}{' (U-shape)' * u_shape} do not compose "
                        f"to the unsplit model (max |Δ logits| = {gap:.3g}); its forward transforms the hidden "
                        "states outside the modules a split can hand over"
                    )


_TASKS = ("classification", "causal-lm")


def check_splittable(config: Any, task: str, split_layer: int | None = None) -> Family:
    """Pre-flight, before any weights are loaded: can a model of this ``transformers`` config be split?

    Builds a randomly initialised model of the same architecture for ``task`` (``"classification"`` or
    ``"causal-lm"``) with at most two blocks and a small vocabulary, and checks that the halves compose to
    its logits at every cut, plain and U-shaped. Checks ``split_layer`` (if given) against the real number
    of blocks. Returns the :class:`Family` (``num_blocks`` of the real config); raises :class:`SplitError`
    with a one-line reason otherwise. The width is kept, so for a 7B-class config this builds ~0.5B random
    parameters (seconds, ~2 GB of memory); :func:`family_of` on the loaded model checks one cut again.
    """
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    name = str(getattr(config, "model_type", None) or type(config).__name__)
    if task not in _TASKS:
        raise SplitError(f"task={task!r}: allowed {', '.join(_TASKS)}")
    if getattr(config, "is_encoder_decoder", False):
        raise SplitError(f"{name}: encoder-decoder models cannot be split (every decoder block reads the "
                         "encoder's output); use an encoder-only or decoder-only model")
    total = getattr(config, "num_hidden_layers", None)
    if not isinstance(total, int) or total < 1:
        raise SplitError(f"{name}: config.num_hidden_layers={total!r}; a split needs the number of blocks")
    if split_layer is not None:
        _check_range(split_layer, total, f"model type {name!r}")
    auto = AutoModelForSequenceClassification if task == "classification" else AutoModelForCausalLM
    small = _small_config(config, min(total, 2))
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = auto.from_config(small, dtype=torch.float32)
    except ValueError as err:
        if "Unrecognized configuration class" in str(err):
            raise SplitError(f"{name}: transformers has no {auto.__name__} for this model type") from err
        raise SplitError(f"{name}: cannot build a model of this config ({_one_line(err)})") from err
    except Exception as err:
        raise SplitError(f"{name}: cannot build a model of this config ({type(err).__name__}: {_one_line(err)})") \
            from err
    family = _discover(model)
    _verify(model, family, range(family.num_blocks + 1))
    return replace(family, num_blocks=total)


def _small_config(config: Any, layers: int, vocab: int = 256) -> Any:
    """A copy of ``config`` with ``layers`` blocks (per-layer lists cut to match) and at most ``vocab`` tokens."""
    from fedguard.model.loading import first_blocks_config  # no cycle: loading does not import this module

    small, _ = first_blocks_config(config, layers)
    if isinstance(getattr(small, "vocab_size", None), int) and small.vocab_size > vocab:
        small.vocab_size = vocab
        for key in ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id",
                    "unk_token_id", "mask_token_id", "decoder_start_token_id"):
            value = getattr(small, key, None)
            if isinstance(value, int) and value >= vocab:
                setattr(small, key, vocab - 1)
            elif isinstance(value, list):
                setattr(small, key, [min(v, vocab - 1) for v in value])
    return small
