"""Canary exposure and label-flip memorisation: the rank arithmetic, the candidate scoring, and a tiny model
that memorised its canaries against one that never saw them."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from scipy import stats

from fedguard.runtime import run_data
from fedguard.attacks.canaries import (
    candidate_codes,
    canary_exposure,
    code_tokens,
    exposure_of,
    exposure_verdict,
    fisher_p_value,
    label_flip_margins,
    secret_losses,
)
from fedguard.attacks.exposure import label_flip_verdict
from fedguard.attacks.membership import score_attack
from fedguard.config import RunConfig
from fedguard.data.canaries import SecretCanary, label_flip_records, secret_canaries, secret_records
from fedguard.data.instructions import InstructionDataset, tokenize_instructions
from fedguard.model.loading import ModelSpec, load_task_model, load_tokenizer
from tests.apps.tiny_causal_lm import save_tiny_llama
from tests.attacks.tiny_run import save_tiny_bert


def _lm_canaries(seed: int, count: int = 4, digits: int = 3) -> list[SecretCanary]:
    return secret_canaries(RunConfig(task="causal-lm", canaries=count, canary_digits=digits, seed=seed))


# -- arithmetic ------------------------------------------------------------------------------------------------

def test_exact_rank_counts_lower_losses_and_ties_half():
    others = np.array([0.5, 1.0, 2.0, 3.0, 1.0, 4.0, 5.0, 6.0, 7.0])  # |R| = 10
    result = exposure_of(1.0, others, space=10, exhaustive=True)
    assert result.method == "exact" and result.rank == 1 + 1 + 0.5 * 2
    assert result.exposure == pytest.approx(math.log2(10) - math.log2(3))
    top = exposure_of(0.1, others, 10, True)
    assert top.rank == 1 and top.exposure == pytest.approx(math.log2(10))
    assert exposure_of(9.0, others, 10, True).exposure == pytest.approx(0.0)
    with pytest.raises(ValueError, match="all \\|R\\| - 1 = 9"):
        exposure_of(1.0, others[:5], 10, True)


def test_sampled_rank_scales_the_fraction_below_to_the_whole_candidate_set():
    result = exposure_of(1.0, np.array([0.5, 2.0, 3.0, 4.0]), space=10 ** 6, exhaustive=False)
    assert result.method == "sampled" and result.rank == pytest.approx(1 + (10 ** 6 - 1) / 4)
    assert result.exposure == pytest.approx(6 * math.log2(10) - math.log2(1 + (10 ** 6 - 1) / 4))


def test_extrapolated_rank_comes_from_a_skew_normal_fit_when_no_sample_is_below():
    sample = stats.skewnorm.rvs(4.0, loc=20.0, scale=3.0, size=2000, random_state=np.random.default_rng(0))
    loss = float(sample.min()) - 2.0
    result = exposure_of(loss, sample, space=10 ** 8, exhaustive=False)
    assert result.method == "extrapolated"
    shape, location, scale = stats.skewnorm.fit(sample)
    expected_rank = 1 + (10 ** 8 - 1) * stats.skewnorm.cdf(loss, shape, location, scale)
    assert result.rank == pytest.approx(expected_rank)
    # Below every sampled loss: more exposed than one sampled candidate below would make it.
    assert result.exposure > math.log2(2000)
    assert exposure_of(loss - 5, sample, 10 ** 8, False).exposure > result.exposure


def test_fisher_p_value_of_one_canary_is_its_rank_fraction():
    assert fisher_p_value([3.0]) == pytest.approx(2 ** -3)
    assert fisher_p_value([1.0, 1.0]) > 0.1 and fisher_p_value([10.0, 10.0]) < 1e-4


def test_verdict_needs_a_small_p_value_and_a_margin_over_the_base_model():
    assert "LEAKY" in exposure_verdict([9.9, 9.9], [1.0, 2.0], 9.97)
    assert "no memorisation detected" in exposure_verdict([1.0, 2.5], [1.0, 2.0], 9.97)
    assert "no memorisation detected" in exposure_verdict([9.9, 9.9], [9.0, 9.5], 9.97)  # base already there


def test_candidates_are_every_other_code_or_a_reproducible_sample_without_the_secret():
    canary = SecretCanary("Ada Test", "042")
    codes, exhaustive = candidate_codes(canary, 999, np.random.default_rng(0))
    assert exhaustive and len(codes) == 999 and "042" not in codes and len(set(codes)) == 999
    codes, exhaustive = candidate_codes(canary, 100, np.random.default_rng(0))
    assert not exhaustive and len(set(codes)) == 100 and "042" not in codes and all(len(c) == 3 for c in codes)
    assert codes == candidate_codes(canary, 100, np.random.default_rng(0))[0]


# -- scoring a causal LM ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    """(tokenizer, base, trained): a tiny random Llama, and a copy fine-tuned on 4 canaries (seed 1)."""
    folder = save_tiny_llama(tmp_path_factory.mktemp("tiny-llama") / "model")
    spec = ModelSpec(str(folder), "causal-lm", 0)
    tokenizer = load_tokenizer(spec)
    base = load_task_model(spec, tokenizer.pad_token_id).eval()
    trained = load_task_model(spec, tokenizer.pad_token_id)
    records = secret_records(_lm_canaries(seed=1))
    batch = tokenize_instructions(tokenizer, records, list(range(len(records))), 128)
    targets = batch.labels[:, 1:]
    keep = targets != -100
    optimizer = torch.optim.Adam(trained.parameters(), lr=5e-3)
    torch.manual_seed(0)
    trained.train()
    for _ in range(100):  # the head only on response positions: the 30k-token vocabulary dominates otherwise
        hidden = trained.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
        loss = torch.nn.functional.cross_entropy(trained.lm_head(hidden[:, :-1][keep]), targets[keep])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return tokenizer, base, trained.eval()


class _Unspaced(SecretCanary):
    """Digits not separated: WordPiece cuts the codes into different numbers of tokens."""

    def stated(self, code: str | None = None) -> str:
        return f"{self.fixed_text} {self.code if code is None else code}"


@pytest.mark.parametrize("canary,codes", [
    (_lm_canaries(seed=1)[0], ["000", "999", "123", "001", "998"]),  # one token per digit
    (_Unspaced("Ada Test", "123456"), ["5", "99", "123456", "123457", "777777", "100000"]),  # 1 to 5 tokens
])
def test_candidate_loss_is_the_code_tokens_nll_of_the_full_record(lm, canary, codes):
    tokenizer, base, _ = lm
    fast = secret_losses(base, tokenizer, canary, codes, batch_size=2)
    records = InstructionDataset([canary.prompt] * len(codes), [canary.response(code) for code in codes])
    batch = tokenize_instructions(tokenizer, records, list(range(len(codes))), 128)
    with torch.no_grad():
        log_probs = base(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1].log_softmax(-1)
    nll = -log_probs.gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)
    fixed = len(tokenizer(canary.fixed_text, add_special_tokens=False)["input_ids"])
    start = int((batch.labels[0] != -100).nonzero()[0]) + fixed - 1  # position predicting the first code token
    lengths = [len(t) for t in code_tokens(tokenizer, canary, codes)]
    expected = [float(nll[i, start:start + n].sum()) for i, n in enumerate(lengths)]
    np.testing.assert_allclose(fast, expected, rtol=1e-5)
    if isinstance(canary, _Unspaced):
        assert len(set(lengths)) >= 3  # codes of different token counts in one batch
    else:
        assert lengths == [3] * len(codes)


def test_a_model_trained_on_its_canaries_exposes_them_and_the_base_model_does_not(lm):
    tokenizer, base, trained = lm
    rng = np.random.default_rng(0)
    exposures = {"trained": [], "base": [], "unseen": []}
    for canary, unseen in zip(_lm_canaries(seed=1), _lm_canaries(seed=2)):
        codes, exhaustive = candidate_codes(canary, 10_000, rng)
        assert exhaustive and len(codes) == 999  # |R| = 10^3, every candidate scored
        exposures["trained"].append(canary_exposure(trained, tokenizer, canary, codes, exhaustive))
        exposures["base"].append(canary_exposure(base, tokenizer, canary, codes, exhaustive))
        codes, exhaustive = candidate_codes(unseen, 10_000, rng)
        exposures["unseen"].append(canary_exposure(trained, tokenizer, unseen, codes, exhaustive))
    bits = math.log2(1000)
    trained, base, unseen = ([e.exposure for e in exposures[k]] for k in ("trained", "base", "unseen"))
    assert min(trained) > bits - 1.5 and all(e.method == "exact" for e in exposures["trained"])
    assert np.mean(base) < 4 and np.mean(unseen) < 4  # chance: 1/ln 2 = 1.44 bits on average
    assert "LEAKY" in exposure_verdict(trained, base, bits)
    assert "no memorisation detected" in exposure_verdict(unseen, base, bits)


def test_sampling_candidates_estimates_the_rank_of_a_memorised_canary(lm):
    tokenizer, _, trained = lm
    canary = _lm_canaries(seed=1)[0]
    codes, exhaustive = candidate_codes(canary, 200, np.random.default_rng(0))
    result = canary_exposure(trained, tokenizer, canary, codes, exhaustive)
    assert result.method in ("sampled", "extrapolated") and result.scored == 200
    assert result.exposure > math.log2(1000) - 3


# -- label flips (classification) ------------------------------------------------------------------------------

def test_label_flip_margins_find_the_memorised_flips(tmp_path):
    folder = save_tiny_bert(tmp_path / "bert", hidden=32, layers=1)
    spec = ModelSpec(str(folder), "classification", 2)
    tokenizer = load_tokenizer(spec)
    torch.manual_seed(0)
    model = load_task_model(spec, tokenizer.pad_token_id)
    base = copy.deepcopy(model).eval()
    data = run_data("classification", "sst2", "sentence", "label")
    dev = data.dev.subset(list(range(20)))
    canaries, controls = list(range(0, 20, 2)), list(range(1, 20, 2))
    # As in a shard: the flipped canaries among correctly labelled rows (alone, flipping them all would just
    # teach the model inverted sentiment, and the controls would follow).
    inserted = data.train.subset(list(range(60))).concat(label_flip_records(dev, canaries, 2))
    encoded = tokenizer(inserted.text, padding=True, truncation=True, max_length=32, return_tensors="pt")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(model(**encoded).logits, torch.tensor(inserted.label))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    hits, margins = label_flip_margins(model, tokenizer, dev, canaries, 2, 32)
    control_hits, control_margins = label_flip_margins(model, tokenizer, dev, controls, 2, 32)
    score = score_attack(margins, control_margins)  # 10 vs 10: z > 3 needs an AUC above 0.9
    assert hits.mean() - control_hits.mean() >= 0.3 and margins.mean() > control_margins.mean() + 2
    trained = {"canary_flip_rate": hits.mean(), "control_flip_rate": control_hits.mean(), "margin_auc": score.auc,
               "margin_z": score.z}
    assert label_flip_verdict(trained, len(canaries)).startswith("label-flip memorisation: LEAKY")
    base_margins = [label_flip_margins(base, tokenizer, dev, rows, 2, 32)[1] for rows in (canaries, controls)]
    assert abs(score_attack(*base_margins).z) < 3  # the model before training cannot tell them apart
    verdict = {"canary_flip_rate": 1.0, "control_flip_rate": 0.5, "margin_auc": 1.0, "margin_z": 3.4}
    assert "inconclusive" in label_flip_verdict(verdict, 4)
