"""Cut a Hugging Face task model into a client half and a server half.

The client half holds the embeddings and the first ``split_layer`` transformer blocks; the server half
holds the remaining blocks, the final norm and the task head. Composition is exact:
``server(client(input_ids, mask), mask)`` equals the unsplit model's logits (fp32, to ~1e-6).

Both halves are *views* over the one loaded model: they share its modules (no weights are copied) and
keep its module names, including the original block indices, so a LoRA adapter trained on a half has
the same parameter names as a LoRA adapter on the whole model (the two halves' adapters can be merged
into one adapter for the unsplit model). Each half runs the base model's own ``forward`` (masks, rotary
embeddings and position ids are computed by ``transformers`` itself on both sides); only the pieces
that must not run twice are replaced: on the client the final norm, on the server the token and
position embeddings.

What crosses the split: the hidden states after block ``split_layer`` (``[batch, seq, hidden]``) and the
2-D padding mask (``[batch, seq]``, 1 = real token). Position ids are ``0..seq-1`` on both sides (the
``transformers`` default), so they need not be sent; no key/value cache is ever built or sent.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn


class SplitError(ValueError):
    """The model cannot be split as asked (unsupported architecture or split index out of range)."""


@dataclass(frozen=True)
class Family:
    """Where a model family keeps its parts (attribute paths inside the task model)."""

    name: str
    base: str  # attribute of the task model holding the base model
    blocks: str  # path inside the base model to the ModuleList of blocks
    final_norm: str | None  # attribute of the base model applied after the blocks
    server_passthrough: tuple[str, ...]  # base-model attributes replaced on the server half
    default_lora_targets: tuple[str, ...]


FAMILIES: dict[str, Family] = {
    "bert": Family("bert", "bert", "encoder.layer", None, ("embeddings",), ("query", "value")),
    "roberta": Family("roberta", "roberta", "encoder.layer", None, ("embeddings",), ("query", "value")),
    "gpt2": Family("gpt2", "transformer", "h", "ln_f", ("wte", "wpe", "drop"), ("c_attn",)),
    "llama": Family("llama", "model", "layers", "norm", ("embed_tokens",), ("q_proj", "v_proj")),
    "qwen2": Family("qwen2", "model", "layers", "norm", ("embed_tokens",), ("q_proj", "v_proj")),
    "mistral": Family("mistral", "model", "layers", "norm", ("embed_tokens",), ("q_proj", "v_proj")),
}


def family_of(model: nn.Module) -> Family:
    """The :class:`Family` of a loaded task model, or :class:`SplitError` listing the supported ones."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in FAMILIES:
        raise SplitError(
            f"unsupported architecture {model_type!r}; supported model types: {', '.join(sorted(FAMILIES))}"
        )
    return FAMILIES[model_type]


def num_blocks(model: nn.Module) -> int:
    """Number of transformer blocks of a supported task model."""
    family = family_of(model)
    return len(_get(getattr(model, family.base), family.blocks))


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


class _PassthroughEmbeddings(nn.Module):
    """Server-side stand-in for an embedding module: returns the hidden states it is given."""

    def forward(self, input_ids=None, inputs_embeds=None, **_: object) -> torch.Tensor:
        if inputs_embeds is None:
            raise RuntimeError("the server half has no token embeddings; pass the client's hidden states")
        return inputs_embeds


class _NoTokenEmbeddings(nn.Module):
    """Server-side stand-in for a token-embedding table the server half must never use."""

    def forward(self, *_: object, **__: object) -> torch.Tensor:
        raise RuntimeError("the server half has no token embeddings; pass the client's hidden states")


class _ZeroPositions(nn.Module):
    """Server-side stand-in for learned position embeddings (already added on the client)."""

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        return torch.zeros((), dtype=torch.get_default_dtype(), device=position_ids.device)


def _get(obj: object, path: str) -> nn.Module:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj  # type: ignore[return-value]


def _view(module: nn.Module) -> nn.Module:
    """A shallow copy of ``module`` whose child modules can be replaced without touching the original."""
    clone = copy.copy(module)
    clone._modules = OrderedDict(module._modules)
    clone._parameters = OrderedDict(module._parameters)
    clone._buffers = OrderedDict(module._buffers)
    return clone


def _base_view(task_model: nn.Module, family: Family, start: int, stop: int, server: bool) -> nn.Module:
    base = getattr(task_model, family.base)
    view = _view(base)
    # The blocks: walk the path, shallow-copying each container so the original stays whole.
    *parents, leaf = family.blocks.split(".")
    holder = view
    for name in parents:
        child = _view(getattr(holder, name))
        holder._modules[name] = child
        holder = child
    blocks = list(_get(base, family.blocks))[start:stop]
    holder._modules[leaf] = _IndexedBlocks(blocks, start)
    # A config of its own, so per-layer settings (e.g. Qwen2's layer_types) line up with the blocks.
    config = copy.copy(base.config)
    config.num_hidden_layers = stop - start
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        config.layer_types = list(layer_types)[start:stop]
    view.config = config
    if server:
        for name in family.server_passthrough:
            if name == "embeddings":
                view._modules[name] = _PassthroughEmbeddings()
            elif name == "wpe":
                view._modules[name] = _ZeroPositions()
            elif name == "drop":
                view._modules[name] = nn.Identity()
            else:
                view._modules[name] = _NoTokenEmbeddings()
    else:
        _strip_top(view, family)
    return view


class ClientHalf(nn.Module):
    """Embeddings + blocks ``[0, split_layer)``; maps token ids to the hidden states that cross the split.

    With ``with_head`` (the U-shaped split) it also holds the top of the network — the final norm, the
    pooler (BERT) and the task head — applied by :meth:`head` to the hidden states the server returns, so
    labels, logits and the loss never leave the client.
    """

    def __init__(self, task_model: nn.Module, split_layer: int, with_head: bool = False) -> None:
        super().__init__()
        self.family = family_of(task_model)
        self.split_layer = split_layer
        self.config = task_model.config
        setattr(self, self.family.base, _base_view(task_model, self.family, 0, split_layer, server=False))
        self.head_kind: str | None = None
        if with_head:
            base = getattr(task_model, self.family.base)
            self.head_kind = _head_kind(task_model, self.family)
            self.top_norm = getattr(base, self.family.final_norm) if self.family.final_norm else nn.Identity()
            self.top_pooler = base.pooler if self.head_kind == "bert-pooler" else nn.Identity()
            for name in _HEAD_MODULES[self.head_kind]:
                setattr(self, name, getattr(task_model, name))

    @property
    def base(self) -> nn.Module:
        return getattr(self, self.family.base)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Hidden states ``[batch, seq, hidden]`` after block ``split_layer`` (before any final norm)."""
        return self.base(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state

    def head(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """U-shaped split only: task logits from the hidden states after the last block (pre final norm)."""
        if self.head_kind is None:
            raise RuntimeError("this client half has no head (built without with_head)")
        normed = self.top_norm(hidden)
        pooled = self.top_pooler(normed) if self.head_kind == "bert-pooler" else None
        return _head_logits(self, self.head_kind, normed, pooled, attention_mask)


class ServerHalf(nn.Module):
    """Blocks ``[split_layer, N)`` + final norm + task head; maps split hidden states to logits.

    Without ``with_head`` (the U-shaped split) it is the middle of the network only: blocks
    ``[split_layer, N)``, returning the hidden states after the last block, before any final norm.
    """

    def __init__(self, task_model: nn.Module, split_layer: int, with_head: bool = True) -> None:
        super().__init__()
        self.family = family_of(task_model)
        self.split_layer = split_layer
        self.config = task_model.config
        total = num_blocks(task_model)
        view = _base_view(task_model, self.family, split_layer, total, server=True)
        self.head_kind: str | None = None
        if with_head:
            self.head_kind = _head_kind(task_model, self.family)
            for name in _HEAD_MODULES[self.head_kind]:
                setattr(self, name, getattr(task_model, name))
        else:
            _strip_top(view, self.family)
        setattr(self, self.family.base, view)

    @property
    def base(self) -> nn.Module:
        return getattr(self, self.family.base)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Task logits: ``[batch, num_labels]`` (classification) or ``[batch, seq, vocab]`` (causal LM);
        without a head, the hidden states ``[batch, seq, hidden]`` after the last block."""
        out = self.base(inputs_embeds=hidden, attention_mask=attention_mask, use_cache=False)
        if self.head_kind is None:
            return out.last_hidden_state
        pooled = out.pooler_output if self.head_kind == "bert-pooler" else None
        return _head_logits(self, self.head_kind, out.last_hidden_state, pooled, attention_mask)


_HEAD_MODULES = {
    "bert-pooler": ("dropout", "classifier"),
    "roberta-head": ("classifier",),
    "last-token-score": ("score",),
    "lm-head": ("lm_head",),
}


def _strip_top(view: nn.Module, family: Family) -> None:
    """Remove what follows the blocks (final norm, pooler) from a base-model view."""
    if family.final_norm is not None:
        view._modules[family.final_norm] = nn.Identity()
    if "pooler" in view._modules:
        view._modules["pooler"] = None


def _head_logits(owner: nn.Module, head_kind: str, last_hidden: torch.Tensor, pooled: torch.Tensor | None,
                 attention_mask: torch.Tensor) -> torch.Tensor:
    """The task head of ``owner`` applied to the final (normed) hidden states, as ``transformers`` does."""
    if head_kind == "bert-pooler":
        return owner.classifier(owner.dropout(pooled))
    if head_kind == "roberta-head":
        return owner.classifier(last_hidden)
    if head_kind == "last-token-score":
        scores = owner.score(last_hidden)
        positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
        last = (positions * attention_mask.to(positions.dtype)).argmax(-1)
        return scores[torch.arange(scores.shape[0], device=scores.device), last]
    return owner.lm_head(last_hidden)


def _head_kind(task_model: nn.Module, family: Family) -> str:
    names = set(task_model._modules)
    if family.name == "bert" and {"classifier", "dropout"} <= names:
        if getattr(getattr(task_model, family.base), "pooler", None) is None:
            raise SplitError("BERT sequence classification needs the pooler (add_pooling_layer=True)")
        return "bert-pooler"
    if family.name == "roberta" and "classifier" in names:
        return "roberta-head"
    if "score" in names:
        return "last-token-score"
    if "lm_head" in names:
        return "lm-head"
    raise SplitError(
        f"unsupported head {type(task_model).__name__} for {family.name}: supported are sequence "
        "classification (BERT, RoBERTa, GPT-2, Llama family) and causal LM (GPT-2, Llama family)"
    )


def split_model(task_model: nn.Module, split_layer: int, u_shape: bool = False) -> tuple[ClientHalf, ServerHalf]:
    """Split ``task_model`` after block ``split_layer`` (0 = only the embeddings on the client).

    ``u_shape``: the client half also keeps the final norm and the task head (:meth:`ClientHalf.head`) and
    the server half is the middle blocks only, so ``client.head(server(client(x)))`` is the model's logits.

    Raises :class:`SplitError` for an unsupported architecture or ``split_layer`` outside
    ``[0, num_blocks]``.
    """
    total = num_blocks(task_model)
    if isinstance(split_layer, bool) or not isinstance(split_layer, int) or not 0 <= split_layer <= total:
        raise SplitError(
            f"split-layer={split_layer!r} is out of range for {type(task_model).__name__} "
            f"with {total} blocks: allowed 0..{total}"
        )
    return ClientHalf(task_model, split_layer, with_head=u_shape), ServerHalf(task_model, split_layer, not u_shape)
