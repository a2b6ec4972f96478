"""What ``capture-activations = N`` records: the first N distinct examples a client sends, then every later release
of those same examples (keyed by shard index), in a file that older captures still load alongside."""

from __future__ import annotations

import io

import torch

from fedguard.attacks.run_dir import load_captures
from fedguard.config import RunConfig
from fedguard.data.batches import TokenBatch
from fedguard.outputs.capture import CAPTURE_VERSION, ActivationCapture, capture_path

WIDTH = 3


def _chunk(indices: list[int], lengths: dict[int, int], release: int) -> tuple[torch.Tensor, TokenBatch]:
    """One batch of shard examples: token ids derived from the index, padding past each example's length,
    and sent states that say which example and which release they are (value = 100·index + release)."""
    longest = max(lengths[i] for i in indices)
    ids = torch.zeros(len(indices), longest, dtype=torch.long)
    mask = torch.zeros(len(indices), longest, dtype=torch.long)
    hidden = torch.zeros(len(indices), longest, WIDTH)
    for j, index in enumerate(indices):
        n = lengths[index]
        ids[j, :n] = torch.arange(n) + 10 * index
        mask[j, :n] = 1
        hidden[j, :n] = 100.0 * index + release
    return hidden, TokenBatch(ids, mask, torch.tensor([index % 2 for index in indices]))


def test_later_releases_of_the_captured_examples_are_kept_and_no_other_example_is(tmp_path):
    config = RunConfig(output_dir=str(tmp_path), capture_activations=2, split_layer=1)
    rows = [40, 41, 42, -1]  # shard index -> training row (-1: a canary copy)
    lengths = {0: 3, 1: 2, 2: 4, 3: 2}
    # Round 1: examples 2, 0 (captured, the limit is 2), then 1 (not captured); round 2: 0 again, 3, 2 twice.
    sends = [([2, 0], 1, 1), ([1], 1, 1), ([0, 3], 2, 2), ([2], 2, 2), ([2], 2, 3)]
    for indices, server_round, release in sends:
        hidden, batch = _chunk(indices, lengths, release)
        ActivationCapture(config, 0, rows).record([hidden], [batch], [indices], server_round)
    saved = torch.load(capture_path(tmp_path, 0), weights_only=False)
    assert saved["version"] == CAPTURE_VERSION == 2
    assert saved["shard_index"] == [2, 0] and saved["rows"] == [42, 40] and saved["round"] == [1, 1]
    assert [h[0, 0].item() for h in saved["hidden"]] == [201, 1]  # first releases, padding removed:
    assert [h.shape for h in saved["hidden"]] == [(4, WIDTH), (3, WIDTH)]
    assert [[r[0, 0].item() for r in more] for more in saved["repeats"]] == [[202, 203], [2]]
    assert saved["repeat_rounds"] == [[2, 2], [2]]

    captures = load_captures(tmp_path)
    assert captures.release_counts() == [3, 2]
    assert [[r[0, 0].item() for r in group] for group in captures.releases] == [[201, 202, 203], [1, 2]]
    assert captures.release_rounds == [[1, 2, 2], [1, 2]]
    assert captures.subset([1]).releases[0][1][0, 0].item() == 2


def test_a_version_1_capture_still_loads_as_one_release_per_example(tmp_path):
    old = {"hidden": [torch.ones(3, WIDTH)], "input_ids": [torch.tensor([101, 7, 102])], "labels": [1], "rows": [5],
           "round": [1], "meta": {"model": "", "task": "classification", "split-layer": 0, "dataset": "sst2",
                                  "max-length": 64, "act-clip-norm": 0.0, "act-noise-multiplier": 0.0,
                                  "label-protection": "clear"}}
    path = capture_path(tmp_path, 0)
    path.parent.mkdir(parents=True)
    buffer = io.BytesIO()
    torch.save(old, buffer)
    path.write_bytes(buffer.getvalue())
    captures = load_captures(tmp_path)
    assert len(captures) == 1 and captures.release_counts() == [1] and captures.mechanism() is None
    # A resumed run appends to it: new examples are keyed, the old one (no shard index) gains no repeat.
    config = RunConfig(output_dir=str(tmp_path), capture_activations=2, split_layer=0)
    hidden, batch = _chunk([0], {0: 2}, release=1)
    for _ in range(2):
        ActivationCapture(config, 0, [5]).record([hidden], [batch], [[0]], 2)
    assert load_captures(tmp_path).release_counts() == [1, 2]
