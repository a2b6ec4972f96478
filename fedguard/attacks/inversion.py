"""Reconstructing a client's text from the hidden states it sent: the server as adversary.

The honest-but-curious server receives, for every example, the hidden states after block ``split-layer``
(after the client's clipping and noise, if any) and knows the base model, the client adapter it receives
every round (and so the final one) and the mechanism. Attacks here (the optimisation attack is in
:mod:`fedguard.attacks.optimisation`):

* :func:`nearest_neighbour_inversion` — for a split at the embedding layer (``split-layer = 0``). What the
  client sends at position t is the embedding module's output for (token, position t), which the server can
  compute for *every* token of the vocabulary (:func:`embedding_candidates`); it picks the candidate most
  similar to the received vector. Similarity is **cosine**: under isotropic Gaussian noise with an unknown
  positive scale (the client's per-example clipping factor, and dropout's 1/(1-p)), the maximum-likelihood
  candidate ``argmax_v max_a p(y | a·c_v)`` is the one with the largest cosine ``y·c_v / |c_v|`` (up to
  the |y| term common to all candidates); plain L2 (``metric="l2"``) is thrown off by that scale. At a
  deeper split it is still defined (it compares with layer-0 embeddings) but is only a weak heuristic. With a
  bottleneck at the cut (the half's ``cut_down``, H → k) the candidates are passed through it (``project``).
* :class:`LearnedInverter` — for deeper splits: the attacker passes *public* text (never a client's) through
  a client half (the base model's, or one with the run's final client adapter: any width, the half's own
  forward), applies the run's own mechanism to it (Gaussian clip-and-noise or d_χ; noise-aware attacker),
  and trains a small per-position network mapping the hidden state at t (and its neighbours) to the token
  at t (:func:`train_learned_inverter`). Its output is tied to the model's token-embedding table (cosine
  against every row, learned temperature), so it scores tokens it never saw in the public text, plus a
  learned per-token bias (the prior it falls back on under noise).

* :func:`average_releases` — the server sees every release of an example; with fresh noise each time, the
  mean of k releases has 1/√k of the noise. Either attack then runs on the means.

Both return, per example, the predicted token id at every position (``[T_i]`` long tensors), to be scored
with :mod:`fedguard.attacks.metrics` against the true tokens.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from fedguard.mechanisms.activations import ActivationMechanism, ActivationPrivacy
from fedguard.model.split import family_of

Metric = Literal["cosine", "l2"]


# --------------------------------------------------------------------------------------------------------------
# Nearest-neighbour inversion (split at the embedding layer)
# --------------------------------------------------------------------------------------------------------------

def input_embedding_table(model: nn.Module) -> torch.Tensor:
    """The token-embedding matrix ``[V, H]`` of a supported task model (or of a client half)."""
    family = family_of(model)
    base = getattr(model, family.base)
    return base.get_input_embeddings().weight


@torch.no_grad()
def embedding_candidates(model: nn.Module, position: int) -> torch.Tensor:
    """``[V, H]``: what the embedding layer outputs at ``position`` for every token of the vocabulary.

    As the model computes it at inference (no dropout): BERT/RoBERTa ``LayerNorm(word + position + type 0)``
    (RoBERTa's positions start after its padding index), GPT-2 ``wte + wpe[position]``, Llama-family
    ``embed_tokens`` (positions enter later, through rotary attention). ``model``: the task model or a client
    half built from it; only the base model's embedding modules are used.
    """
    family = family_of(model)
    base = getattr(model, family.base)
    if family.name in ("bert", "roberta"):
        emb = base.embeddings
        offset = emb.padding_idx + 1 if family.name == "roberta" else 0
        summed = (emb.word_embeddings.weight + emb.token_type_embeddings.weight[0]
                  + emb.position_embeddings.weight[position + offset])
        return emb.LayerNorm(summed)
    if family.name == "gpt2":
        return base.wte.weight + base.wpe.weight[position]
    return base.get_input_embeddings().weight


def _scores(received: torch.Tensor, candidates: torch.Tensor, metric: Metric) -> torch.Tensor:
    """``[N, V]`` similarity (higher = closer) of each received vector with each candidate."""
    if metric == "cosine":
        return F.normalize(received, dim=-1) @ F.normalize(candidates, dim=-1).T
    if metric == "l2":  # -|y - c|^2 up to the |y|^2 term, which is the same for every candidate
        return 2 * received @ candidates.T - (candidates * candidates).sum(-1)
    raise ValueError(f"metric={metric!r}: allowed 'cosine', 'l2'")


@torch.no_grad()
def nearest_neighbour_inversion(hidden: Sequence[torch.Tensor], model: nn.Module, metric: Metric = "cosine",
                                chunk: int = 4096, project: nn.Module | None = None) -> list[torch.Tensor]:
    """For each received ``[T_i, W]`` tensor, the vocabulary token whose embedding at each position is the
    nearest to what was received (``metric``: ``"cosine"`` (default, see the module docstring) or ``"l2"``).

    ``project``: a map applied to every candidate before the comparison — the client half's bottleneck
    ``cut_down`` (H → k) when it has one (:func:`cut_of`), so W = k. Returns one ``[T_i]`` long tensor of
    predicted token ids per example. Cost: one ``[V, H]`` candidate table per position index and a
    ``[N_t, W] x [W, V]`` product for the N_t examples that reach position t.
    """
    model.eval()
    if project is not None:
        project.eval()
    out = [torch.empty(h.shape[0], dtype=torch.long) for h in hidden]
    longest = max((h.shape[0] for h in hidden), default=0)
    for t in range(longest):
        who = [i for i, h in enumerate(hidden) if h.shape[0] > t]
        received = torch.stack([hidden[i][t] for i in who]).float()
        candidates = embedding_candidates(model, t).float()
        if project is not None:
            candidates = project(candidates).float()
        for start in range(0, len(who), chunk):
            best = _scores(received[start:start + chunk], candidates, metric).argmax(-1)
            for i, token in zip(who[start:start + chunk], best.tolist()):
                out[i][t] = token
    return out


def cut_of(half: nn.Module | None) -> nn.Module | None:
    """The bottleneck's ``cut_down`` (H → k) of a client half (inside peft's wrapper too), or None."""
    if half is None:
        return None
    inner = half.get_base_model() if hasattr(half, "get_base_model") else half
    cut = getattr(inner, "cut_down", None)
    return cut if isinstance(cut, nn.Module) else None


def average_releases(releases: Sequence[Sequence[torch.Tensor]]) -> list[torch.Tensor]:
    """Per example, the mean of its releases (each ``[T_i, W]``; a single release is returned as it is). With
    independent noise the mean of k releases carries 1/√k of one release's noise; releases that are
    bit-identical (the noise reused) average to that one release."""
    out = []
    for group in releases:
        if not group:
            raise ValueError("an example without any release")
        if all(torch.equal(r, group[0]) for r in group[1:]):  # one release, or one noise draw resent
            out.append(group[0].float())
        else:
            out.append(torch.stack([r.float() for r in group]).mean(0))
    return out


# --------------------------------------------------------------------------------------------------------------
# Learned inversion (deeper splits)
# --------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class InverterSettings:
    """How the attacker trains its inverter (all cheap by default: a few hundred sentences, a few epochs).

    ``window``: neighbours on each side whose hidden states are fed with position t's; ``width``: hidden
    units of the 2-layer MLP; ``epochs`` over the public positions, each with fresh noise; ``views``:
    forward passes per public sentence with different dropout (the client's forward runs in train mode);
    ``max_train_candidates``: the softmax during training runs over the public text's tokens plus random
    others up to this many (all tokens if the vocabulary is smaller); prediction always scores the whole
    vocabulary.
    """

    window: int = 1
    width: int = 512
    epochs: int = 8
    batch_size: int = 256
    learning_rate: float = 2e-3
    views: int = 2
    max_train_candidates: int = 4096
    seed: int = 0


class LearnedInverter(nn.Module):
    """Per-position inverter: features of position t (its hidden state and ``window`` neighbours each side,
    standardised) -> 2-layer MLP -> a vector compared by cosine with every row of the token-embedding table
    (times a learned temperature), plus a learned per-token bias (the prior: what the attacker falls back on
    when the noise drowns the signal) -> logits over the vocabulary."""

    def __init__(self, hidden_size: int, embedding: torch.Tensor, window: int = 1, width: int = 512) -> None:
        super().__init__()
        self.window = window
        inputs = hidden_size * (2 * window + 1)
        self.net = nn.Sequential(nn.Linear(inputs, width), nn.GELU(), nn.LayerNorm(width),
                                 nn.Linear(width, embedding.shape[1]))
        self.register_buffer("table", F.normalize(embedding.detach().float(), dim=-1))
        self.log_scale = nn.Parameter(torch.tensor(math.log(20.0)))
        self.bias = nn.Parameter(torch.zeros(embedding.shape[0]))  # learns the token prior
        self.register_buffer("mean", torch.zeros(hidden_size))
        self.register_buffer("std", torch.ones(hidden_size))

    def features(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[T, H] -> [T, H·(2w+1)]``: standardised states of t-w..t+w (zeros beyond the sequence)."""
        h = (hidden.float() - self.mean) / self.std
        padded = F.pad(h, (0, 0, self.window, self.window))
        return torch.cat([padded[k:k + h.shape[0]] for k in range(2 * self.window + 1)], dim=-1)

    def logits(self, features: torch.Tensor, candidates: torch.Tensor | None = None) -> torch.Tensor:
        """``[N, V]`` (or ``[N, len(candidates)]``) token scores for ``[N, F]`` features."""
        table, bias = (self.table, self.bias) if candidates is None else (self.table[candidates], self.bias[candidates])
        return F.normalize(self.net(features), dim=-1) @ table.T * self.log_scale.exp() + bias

    @torch.no_grad()
    def top_candidates(self, hidden: Sequence[torch.Tensor], k: int,
                       chunk: int = 2048) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per ``[T_i, W]`` tensor: the ``k`` most likely token ids at every position (``[T_i, k]``, best first)
        and their log-probabilities (``[T_i, k]``, normalised over the whole vocabulary)."""
        self.eval()
        out = []
        for h in hidden:
            feats = self.features(h)
            ids, logp = [], []
            for s in range(0, len(feats), chunk):
                scores = torch.log_softmax(self.logits(feats[s:s + chunk]), dim=-1)
                top = scores.topk(min(k, scores.shape[-1]), dim=-1)
                ids.append(top.indices)
                logp.append(top.values)
            out.append((torch.cat(ids), torch.cat(logp)) if ids else
                       (torch.empty(0, k, dtype=torch.long), torch.empty(0, k)))
        return out

    @torch.no_grad()
    def predict(self, hidden: Sequence[torch.Tensor], chunk: int = 2048) -> list[torch.Tensor]:
        """The most likely token id at every position of each ``[T_i, H]`` tensor (one ``[T_i]`` tensor each)."""
        self.eval()
        out = []
        for h in hidden:
            feats = self.features(h)
            out.append(torch.cat([self.logits(feats[s:s + chunk]).argmax(-1) for s in range(0, len(feats), chunk)])
                       if len(feats) else torch.empty(0, dtype=torch.long))
        return out


@dataclass
class PublicHidden:
    """Hidden states of the public text at the split, before the noise (after clipping), with their tokens:
    ``views[k][i]`` is sentence i's ``[T_i, H]`` states in dropout draw k; ``input_ids[i]`` its ``[T_i]`` tokens."""

    views: list[list[torch.Tensor]]
    input_ids: list[torch.Tensor]
    history: list[float] = field(default_factory=list)


@torch.no_grad()
def public_hidden_states(client_half: nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
                         privacy: ActivationMechanism | None, views: int = 1, seed: int = 0,
                         train: bool = True) -> PublicHidden:
    """Run a client half (the base model's, or one with the run's client adapter) on public ``(input_ids [B, T],
    attention_mask [B, T])`` batches as a client would (``train``: train mode, so with its dropout; a client
    whose bottom is deterministic — ``activation-reuse`` — runs without), clip as the run's mechanism does
    (``privacy``: Gaussian or d_χ), and strip the padding."""
    client_half.train(train)
    out = PublicHidden([[] for _ in range(views)], [])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for input_ids, mask in batches:
            lengths = mask.sum(1).tolist()
            out.input_ids += [input_ids[j, :n].clone() for j, n in enumerate(lengths)]
            for k in range(views):
                hidden = client_half(input_ids, mask)
                if privacy is not None:
                    hidden = privacy.clip(hidden, mask)
                out.views[k] += [hidden[j, :n].float().clone() for j, n in enumerate(lengths)]
    client_half.eval()
    return out


def _noisy(states: list[torch.Tensor], privacy: ActivationMechanism | None,
           generator: torch.Generator) -> list[torch.Tensor]:
    """``states`` plus one fresh draw of the mechanism's noise each (Gaussian: N(0, (σC)²) per coordinate;
    d_χ: per token). Both are independent across tokens, so all tokens are drawn in one call."""
    if privacy is None or (isinstance(privacy, ActivationPrivacy) and privacy.noise_multiplier == 0):
        return states
    if isinstance(privacy, ActivationPrivacy):  # the historical draw order (keeps earlier results reproducible)
        scale = privacy.noise_multiplier * privacy.clip_norm
        return [h + torch.randn(h.shape, generator=generator) * scale for h in states]
    lengths = [h.shape[0] for h in states]
    joined = torch.cat(states).unsqueeze(0)
    noise = privacy.noise(joined, torch.ones(joined.shape[:2], dtype=torch.long), generator)[0]
    return [h + n for h, n in zip(states, noise.split(lengths))]


def _training_candidates(targets: torch.Tensor, vocab: int, limit: int, generator: torch.Generator) -> torch.Tensor:
    if vocab <= limit:
        return torch.arange(vocab)
    seen = torch.unique(targets)
    if len(seen) >= limit:
        return seen
    others = torch.ones(vocab, dtype=torch.bool)
    others[seen] = False
    pool = others.nonzero().squeeze(1)
    extra = pool[torch.randperm(len(pool), generator=generator)[:limit - len(seen)]]
    return torch.sort(torch.cat([seen, extra])).values


def train_learned_inverter(public: PublicHidden, embedding: torch.Tensor, privacy: ActivationMechanism | None,
                           settings: InverterSettings = InverterSettings()) -> LearnedInverter:
    """Train a :class:`LearnedInverter` on the public hidden states, adding the run's noise (Gaussian or d_χ)
    afresh each epoch.

    ``embedding``: the model's token-embedding table ``[V, H_e]`` (the output layer is tied to it).
    The per-epoch training loss (mean cross-entropy, nats) is appended to ``public.history``.
    """
    if not public.input_ids:
        raise ValueError("no public text to train the inverter on")
    generator = torch.Generator().manual_seed(settings.seed)
    hidden_size = public.views[0][0].shape[-1]
    inverter = LearnedInverter(hidden_size, embedding, settings.window, settings.width)
    targets = torch.cat(public.input_ids)
    candidates = _training_candidates(targets, embedding.shape[0], settings.max_train_candidates, generator)
    index = torch.full((embedding.shape[0],), -1, dtype=torch.long)
    index[candidates] = torch.arange(len(candidates))
    local_targets = index[targets]
    never_target = candidates[torch.bincount(local_targets, minlength=len(candidates)) == 0]
    # Standardise inputs with statistics of what the attacker will see (noisy states).
    sample = torch.cat(_noisy(public.views[0], privacy, generator))
    inverter.mean.copy_(sample.mean(0))
    inverter.std.copy_(sample.std(0).clamp_min(1e-6))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        optimizer = torch.optim.AdamW(inverter.parameters(), lr=settings.learning_rate, weight_decay=1e-4)
        for epoch in range(settings.epochs):
            inverter.train()
            states = _noisy(public.views[epoch % len(public.views)], privacy, generator)
            feats = torch.cat([inverter.features(h) for h in states])
            order = torch.randperm(len(feats), generator=generator)
            total = 0.0
            for start in range(0, len(order), settings.batch_size):
                pick = order[start:start + settings.batch_size]
                loss = F.cross_entropy(inverter.logits(feats[pick], candidates), local_targets[pick])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(pick)
            public.history.append(total / len(order))
    with torch.no_grad():  # tokens outside the training softmax get the prior of those never seen as a target
        unseen = torch.ones_like(inverter.bias, dtype=torch.bool)
        unseen[candidates] = False
        reference = inverter.bias[never_target] if len(never_target) else inverter.bias[candidates]
        inverter.bias[unseen] = reference.mean() if len(never_target) else reference.min()
    inverter.eval()
    return inverter


def positional_prior(public_ids: Sequence[torch.Tensor], lengths: Sequence[int]) -> list[torch.Tensor]:
    """Baseline that ignores the hidden states: at each position index, the public text's most frequent token
    there (beyond the longest public sentence, its most frequent token overall). What an attacker who learned
    nothing from the activations would guess; a recovery rate at this level means no measurable leakage."""
    overall = Counter(int(t) for ids in public_ids for t in ids).most_common(1)
    fallback = overall[0][0] if overall else 0
    longest = max(lengths, default=0)
    by_position = []
    for t in range(longest):
        seen = Counter(int(ids[t]) for ids in public_ids if len(ids) > t).most_common(1)
        by_position.append(seen[0][0] if seen else fallback)
    return [torch.tensor(by_position[:n], dtype=torch.long) for n in lengths]
