"""Optimisation-based inversion (BiSR / PIA style): search for the text whose states match what was received.

The server knows the client's bottom (the base model and the client adapter it receives every round; with a
bottleneck, its ``cut_down``), the mechanism and its parameters. For each received example it looks for
the token sequence x that best explains all the releases y_1..y_k it saw of that example:

    minimise over x   NLL(y_1..y_k | clip(f(x)))  +  λ · (−log prior(x))

* ``f``: the client half's own forward (eval mode: no dropout), so the bottleneck and any other module the
  half runs are included, whatever the width of what it sends; ``clip``: the mechanism's clipping. Each
  release may be explained by its own weights (``release_weights`` keys and ``load_weights``: e.g. the
  client adapter the server sent at the start of the release's round), one forward pass per distinct key.
* NLL, from the noise the mechanism adds: Gaussian (``ActivationPrivacy``, std s = σC):
  Σ_r ‖y_r − h‖² / (2 s²) (for k releases this is k·‖ȳ − h‖²/(2s²) up to a constant: the mean of the
  releases with 1/√k of the noise); d_χ (``EmbeddingDChi``, density ∝ exp(−η‖z‖) per token):
  η Σ_r Σ_t ‖y_{r,t} − h_t‖₂. Without noise (clear, or clipping only) a nominal Gaussian whose std is
  ``clear_noise`` times the received states' RMS, so the match dominates the prior.
* Prior: a smoothed bigram model of token ids built from public text (:class:`BigramPrior`): the default
  model is an encoder without an LM head, so the attacker builds its own language prior offline.

The discrete search is relaxed: at every position a distribution over candidate tokens (softmax of free
logits), whose expected input embedding is fed to the half in place of the token embedding (a forward hook
on the half's input-embedding module, so positions, token types and norms are the model's own); the prior
term is the expected bigram log-probability under those distributions. Candidates per position: the
``candidates`` best tokens of an initialiser (the learned inverter: its log-probabilities are the starting
logits), or the whole vocabulary (uniform start). Adam on the logits for ``steps`` steps; the answer is the
argmax at every position, kept only where its objective (with hard tokens) beats the initialiser's own top-1
guess, example by example — so the search never makes the initial guess worse by its own measure.

Deterministic for a given ``seed`` (no sampling; Adam on CPU).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fedguard.mechanisms.activations import ActivationMechanism, ActivationPrivacy
from fedguard.mechanisms.embedding_dchi import EmbeddingDChi


# --------------------------------------------------------------------------------------------------------------
# Language prior from public text
# --------------------------------------------------------------------------------------------------------------

class BigramPrior:
    """Smoothed bigram log-prior over token ids, from public token sequences (e.g. the dev split).

    ``log p(b | a) = log(λ_a · c(a, b) / c(a) + (1 − λ_a) · p_uni(b))`` with ``λ_a = c(a) / (c(a) + β)``
    (Witten–Bell-like: the more often ``a`` was seen, the more its own continuations are trusted) and the
    add-one unigram ``p_uni(b) = (c(b) + 1) / (N + V)``. The first position uses ``p_uni``.
    """

    def __init__(self, sequences: Sequence[torch.Tensor], vocab: int, beta: float = 5.0) -> None:
        self.vocab = int(vocab)
        ids = [s.long().flatten() for s in sequences if len(s)]
        tokens = torch.cat(ids) if ids else torch.zeros(0, dtype=torch.long)
        counts = torch.bincount(tokens, minlength=self.vocab).double()
        self.unigram_logp = ((counts + 1) / (counts.sum() + self.vocab)).log().float()
        pairs = [s[:-1] * self.vocab + s[1:] for s in ids if len(s) > 1]
        keys = torch.cat(pairs) if pairs else torch.zeros(0, dtype=torch.long)
        self.keys, pair_counts = torch.unique(keys, sorted=True, return_counts=True)
        self.pair_counts = pair_counts.double()
        firsts = torch.bincount(self.keys // self.vocab, weights=self.pair_counts, minlength=self.vocab)
        self.context_counts = firsts.double()
        self.beta = beta

    def pair_count(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """``c(first, second)`` elementwise (broadcast shapes)."""
        query = first.long() * self.vocab + second.long()
        if len(self.keys) == 0:
            return torch.zeros(query.shape, dtype=torch.float64)
        at = torch.searchsorted(self.keys, query.flatten()).clamp(max=len(self.keys) - 1)
        found = self.keys[at] == query.flatten()
        return torch.where(found, self.pair_counts[at], torch.zeros_like(self.pair_counts[at])).view(query.shape)

    def bigram_logp(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """``log p(second | first)`` elementwise (broadcast shapes), float32."""
        first, second = torch.broadcast_tensors(first.long(), second.long())
        context = self.context_counts[first]
        trust = context / (context + self.beta)
        pairs = self.pair_count(first, second)
        conditional = torch.where(context > 0, pairs / context.clamp_min(1), torch.zeros_like(context))
        mixed = trust * conditional + (1 - trust) * self.unigram_logp.double()[second].exp()
        return mixed.log().float()

    def sequence_logp(self, ids: torch.Tensor) -> float:
        """Log-prior of one token sequence ``[T]``."""
        if len(ids) == 0:
            return 0.0
        return float(self.unigram_logp[ids[0]] + self.bigram_logp(ids[:-1], ids[1:]).sum())


# --------------------------------------------------------------------------------------------------------------
# The attack
# --------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class OptimisationSettings:
    """``steps`` of Adam (``learning_rate``) on the per-position logits; ``candidates`` tokens per position
    from the initialiser (0 = the whole vocabulary); ``prior_weight`` λ; ``batch_size`` examples optimised
    together (sorted by length); ``clear_noise``: nominal noise std, as a fraction of the received states'
    RMS, when the mechanism adds none; ``max_examples``: how many of the examples to attack (0 = all)."""

    steps: int = 40
    learning_rate: float = 0.3
    candidates: int = 32
    prior_weight: float = 1.0
    batch_size: int = 32
    clear_noise: float = 0.01
    max_examples: int = 0
    seed: int = 0


@dataclass
class OptimisationResult:
    """``predicted[i]``: ``[T_i]`` token ids; ``objective_initial`` / ``objective_final``: mean objective per
    example of the initialiser's top-1 guess and of the answer (nats; lower is better); ``improved``: how many
    examples the search changed."""

    predicted: list[torch.Tensor]
    objective_initial: float
    objective_final: float
    improved: int


def input_embedding_module(half: nn.Module) -> nn.Module:
    """The module that maps token ids to input embeddings inside a client half (inside peft's wrapper too)."""
    inner = half.get_base_model() if hasattr(half, "get_base_model") else half
    family = getattr(inner, "family", None)
    base = getattr(inner, family.base) if family is not None else inner
    return base.get_input_embeddings()


class _Objective:
    """Per-example objective of soft token distributions for one batch (see the module docstring)."""

    def __init__(self, half: nn.Module, embed: nn.Module, mechanism: ActivationMechanism | None,
                 releases: list[list[torch.Tensor]], cand: torch.Tensor | None, vocab: int,
                 prior: BigramPrior | None, settings: OptimisationSettings, pad_id: int | None,
                 keys: list[list[Hashable]] | None = None,
                 load_weights: Callable[[Hashable], object] | None = None) -> None:
        self.half, self.embed, self.mechanism, self.settings = half, embed, mechanism, settings
        self.load_weights = load_weights
        batch = len(releases)
        self.lengths = [r[0].shape[0] for r in releases]
        longest = max(self.lengths)
        width = releases[0][0].shape[-1]
        most = max(len(r) for r in releases)
        self.mask = torch.zeros(batch, longest, dtype=torch.long)
        self.received = torch.zeros(batch, most, longest, width)
        self.release_mask = torch.zeros(batch, most)
        for b, group in enumerate(releases):
            self.mask[b, :self.lengths[b]] = 1
            for r, y in enumerate(group):
                self.received[b, r, :y.shape[0]] = y.float()
                self.release_mask[b, r] = 1
        # Which weights explain which release: {key: [B, R] mask}; one key (the weights in the half) by default.
        if keys is None or load_weights is None:
            self.by_weights: dict[Hashable | None, torch.Tensor] = {None: self.release_mask}
        else:
            distinct = list(dict.fromkeys(key for group in keys for key in group))
            self.by_weights = {key: torch.zeros(batch, most) for key in distinct}
            for b, group in enumerate(keys):
                for r, key in enumerate(group):
                    self.by_weights[key][b, r] = 1
        self.pad_id = pad_id
        self.vocab = vocab
        self.cand = cand  # [B, T, K] token ids, or None: the whole vocabulary
        with torch.no_grad():
            if cand is None:
                self.table = embed(torch.arange(vocab).unsqueeze(0))[0].float()  # [V, He]
            else:
                self.table = embed(cand.flatten(1)).view(*cand.shape, -1).float()  # [B, T, K, He]
        if isinstance(mechanism, EmbeddingDChi):
            self.kind, self.scale = "dchi", float(mechanism.eta)
        else:
            noise = 0.0
            if isinstance(mechanism, ActivationPrivacy):
                noise = mechanism.noise_multiplier * mechanism.clip_norm
            if noise <= 0:
                rms = float(self.received[self.release_mask.bool()].pow(2).mean().sqrt()) if most else 1.0
                noise = settings.clear_noise * max(rms, 1e-6)
            self.kind, self.scale = "gauss", noise
        self.prior_terms = self._prior_terms(prior, vocab, longest) if prior is not None else None

    def _prior_terms(self, prior: BigramPrior, vocab: int, longest: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(log-prior of each candidate at the first position, bigram log-probs between neighbours' candidates)."""
        if self.cand is None:
            if vocab > 4096:
                return None  # a dense V x V bigram table would be too large: no prior in whole-vocabulary mode
            ids = torch.arange(vocab)
            first = prior.unigram_logp[ids]  # [V]
            pair = prior.bigram_logp(ids[:, None], ids[None, :])  # [V, V]
            return first, pair
        first = prior.unigram_logp[self.cand[:, 0]]  # [B, K]
        if longest < 2:
            return first, torch.zeros(self.cand.shape[0], 0, self.cand.shape[2], self.cand.shape[2])
        pair = prior.bigram_logp(self.cand[:, :-1, :, None], self.cand[:, 1:, None, :])  # [B, T-1, K, K]
        return first, pair

    def ids(self, probs: torch.Tensor) -> torch.Tensor:
        """The most likely token at every position (pad id on padding)."""
        best = probs.argmax(-1)
        ids = best if self.cand is None else self.cand.gather(-1, best.unsqueeze(-1)).squeeze(-1)
        if self.pad_id is not None:  # never the pad id on a real token (RoBERTa counts positions from it)
            ids = torch.where((ids == self.pad_id) & (self.mask == 1), (ids + 1) % self.vocab, ids)
            ids = ids.masked_fill(self.mask == 0, self.pad_id)
        return ids

    def parts(self, probs: torch.Tensor) -> Iterator[torch.Tensor]:
        """The objective of per-position token distributions ``probs`` (``[B, T, K]`` or ``[B, T, V]``) in
        ``[B]`` parts: the noise likelihood of the releases of each weight set (loaded just before its part is
        computed), then the prior. A part's gradient must be taken before the next part is asked for: loading
        the next weights changes the tensors its graph saved."""
        if self.cand is None:
            soft = probs @ self.table
        else:
            soft = torch.einsum("btk,btkh->bth", probs, self.table)

        def replace(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
            return soft.to(output.dtype)

        ids = self.ids(probs.detach())
        for key, releases in self.by_weights.items():
            if key is not None:
                self.load_weights(key)
            handle = self.embed.register_forward_hook(replace)
            try:
                hidden = self.half(ids, self.mask).float()
            finally:
                handle.remove()
            if self.mechanism is not None:
                hidden = self.mechanism.clip(hidden, self.mask)
            token = self.mask.unsqueeze(1).float() * releases.unsqueeze(-1)  # [B, R, T]
            residual = self.received - hidden.unsqueeze(1)
            if self.kind == "dchi":
                yield self.scale * ((residual.pow(2).sum(-1) + 1e-12).sqrt() * token).sum((1, 2))
            else:
                yield (residual.pow(2).sum(-1) * token).sum((1, 2)) / (2 * self.scale ** 2)
        if self.prior_terms is None or self.settings.prior_weight == 0:
            return
        first, pair = self.prior_terms
        mask = self.mask.float()
        if self.cand is None:
            head = probs[:, 0] @ first
            chain = torch.einsum("nti,ij,ntj->nt", probs[:, :-1], pair, probs[:, 1:])
        else:
            head = (probs[:, 0] * first).sum(-1)
            chain = torch.einsum("nti,ntij,ntj->nt", probs[:, :-1], pair, probs[:, 1:])
        log_prior = head * mask[:, 0] + (chain * mask[:, 1:]).sum(1)
        yield -self.settings.prior_weight * log_prior

    @torch.no_grad()
    def __call__(self, probs: torch.Tensor) -> torch.Tensor:
        """``[B]`` objective of ``probs`` (no gradient)."""
        return sum(self.parts(probs), torch.zeros(probs.shape[0]))

    def gradient(self, logits: torch.Tensor) -> torch.Tensor:
        """d (summed objective of softmax(logits)) / d logits, part by part (see :meth:`parts`)."""
        probs = torch.softmax(logits, -1)
        grad = torch.zeros_like(logits)
        for part in self.parts(probs):
            grad += torch.autograd.grad(part.sum(), logits, retain_graph=True)[0]
        return grad


def optimisation_inversion(half: nn.Module, releases: Sequence[Sequence[torch.Tensor]],
                           mechanism: ActivationMechanism | None, vocab: int, *,
                           candidates: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None,
                           prior: BigramPrior | None = None, settings: OptimisationSettings = OptimisationSettings(),
                           pad_id: int | None = 0, release_weights: Sequence[Sequence[Hashable]] | None = None,
                           load_weights: Callable[[Hashable], object] | None = None) -> OptimisationResult:
    """Reconstruct each example's tokens from all its releases (``releases[i]``: list of ``[T_i, W]`` tensors as
    received) by optimising relaxed token sequences through ``half`` (the client half with the weights the
    attacker believes the client used), see the module docstring.

    ``candidates[i]``: ``(ids [T_i, K], initial scores [T_i, K])`` from the initialiser (best first), or None to
    search the whole vocabulary (``vocab`` tokens) from a uniform start. ``pad_id``: the tokenizer's padding
    id (some models derive positions from it). ``release_weights[i][r]``: a key naming the weights release r
    of example i was computed with, and ``load_weights(key)`` loads them into ``half`` (both None: the weights
    in ``half`` explain every release). Returns the predictions in the order of ``releases``.
    """
    count = len(releases)
    if candidates is not None and len(candidates) != count:
        raise ValueError(f"{len(candidates)} candidate sets for {count} examples")
    was_training = half.training
    half.eval()
    embed = input_embedding_module(half)
    predicted: list[torch.Tensor | None] = [None] * count
    initial_total = final_total = 0.0
    improved = 0
    order = sorted(range(count), key=lambda i: releases[i][0].shape[0])
    with torch.random.fork_rng(devices=[]), _restore_mode(half, was_training):
        torch.manual_seed(settings.seed)
        for start in range(0, count, settings.batch_size):
            chunk = order[start:start + settings.batch_size]
            group = [[r.float() for r in releases[i]] for i in chunk]
            longest = max(g[0].shape[0] for g in group)
            if candidates is None:
                cand = None
                logits = torch.zeros(len(chunk), longest, vocab)
            else:
                k = candidates[chunk[0]][0].shape[-1]
                cand = torch.zeros(len(chunk), longest, k, dtype=torch.long)
                logits = torch.zeros(len(chunk), longest, k)
                for b, i in enumerate(chunk):
                    ids, scores = candidates[i]
                    cand[b, :ids.shape[0]] = ids
                    logits[b, :ids.shape[0]] = scores.float() - scores.float().max(-1, keepdim=True).values
            keys = None if release_weights is None else [list(release_weights[i]) for i in chunk]
            objective = _Objective(half, embed, mechanism, group, cand, vocab, prior, settings, pad_id, keys,
                                   load_weights)
            start_probs = F.one_hot(logits.argmax(-1), logits.shape[-1]).float()
            logits = logits.clone().requires_grad_(True)
            optimizer = torch.optim.Adam([logits], lr=settings.learning_rate)
            for _ in range(settings.steps):
                optimizer.zero_grad()
                logits.grad = objective.gradient(logits)
                optimizer.step()
            with torch.no_grad():
                final_probs = F.one_hot(logits.argmax(-1), logits.shape[-1]).float()
                before, after = objective(start_probs), objective(final_probs)
                better = after < before
                pick = torch.where(better[:, None], final_probs.argmax(-1), start_probs.argmax(-1))
                chosen = pick if cand is None else cand.gather(-1, pick.unsqueeze(-1)).squeeze(-1)
            for b, i in enumerate(chunk):
                predicted[i] = chosen[b, :objective.lengths[b]].clone()
            initial_total += float(before.sum())
            final_total += float(torch.minimum(before, after).sum())
            improved += int((better & (final_probs.argmax(-1) != start_probs.argmax(-1)).any(-1)).sum())
    return OptimisationResult([p for p in predicted if p is not None], initial_total / max(count, 1),
                              final_total / max(count, 1), improved)


@contextmanager
def _restore_mode(half: nn.Module, training: bool) -> Iterator[None]:
    try:
        yield
    finally:
        half.train(training)


def objective_scale_note(mechanism: ActivationMechanism | None, settings: OptimisationSettings) -> str:
    """How the noise likelihood was set, in words (for the report)."""
    if isinstance(mechanism, EmbeddingDChi):
        return f"d_chi likelihood: eta * sum_t ||y_t - h_t|| with eta = {mechanism.eta:g}"
    if isinstance(mechanism, ActivationPrivacy) and mechanism.noise_multiplier > 0:
        s = mechanism.noise_multiplier * mechanism.clip_norm
        return f"Gaussian likelihood: ||y - h||^2 / (2 s^2) with s = sigma*C = {s:g}"
    return (f"no noise: nominal Gaussian likelihood with s = {settings.clear_noise:g} x the received states' RMS"
            + (" (after the run's clipping)" if mechanism is not None else ""))


