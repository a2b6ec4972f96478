"""The server's ledger records what clients report, rejects what it cannot trust, and enforces budgets."""

from __future__ import annotations

import json

from flwr.app import RecordDict

from fedguard.apps.server_privacy import ServerPrivacy, rdp_epsilon
from strategies.privacy_budget import EligibleGrid
from fedguard.config import RunConfig
from fedguard.privacy import MechanismEvent
from fedguard.protocol import messages as proto

DP = MechanismEvent("dp-sgd", noise_multiplier=1.0, sample_rate=0.01, steps=30, round=1, clip_norm=1.0,
                    relation="replace-one")
DP_SERVER = MechanismEvent("dp-sgd-server", noise_multiplier=1.4, sample_rate=1.0, steps=1, round=1,
                           relation="replace-one")
ACT = MechanismEvent("activation", noise_multiplier=4.0, sample_rate=1.0, steps=1, round=1, clip_norm=30.0,
                     relation="replace-one")
RR = MechanismEvent("label-rr", epsilon=1.0, steps=1, round=1, relation="replace-one")


def _reply(client: str, events: list[MechanismEvent]) -> RecordDict:
    return RecordDict({proto.PRIVACY: proto.encode_privacy(client, events)})


def test_events_are_recorded_per_client_and_persisted(tmp_path):
    privacy = ServerPrivacy(RunConfig(dp_noise_multiplier=1.0, act_clip_norm=30.0, act_noise_multiplier=4.0), tmp_path)
    assert privacy.observe(11, _reply("alice", [ACT])) is None
    assert privacy.observe(11, _reply("alice", [ACT, DP])) is None
    assert privacy.observe(12, _reply("bob", [DP])) is None
    privacy.save()
    saved = json.loads((tmp_path / "privacy_ledger.json").read_text())
    assert set(saved["clients"]) == {"alice", "bob"}
    metrics = privacy.round_metrics()
    assert metrics["epsilon_model_certified"] > 0 and metrics["epsilon_activation"] > 0
    assert metrics["privacy_delta"] == 1e-5 and metrics["epsilon_label"] is None
    assert metrics["epsilon_server_certified"] is None  # labels travel in clear: no guarantee against the server


def test_epsilon_against_the_server_composes_every_mechanism_and_needs_all_of_them(tmp_path):
    config = RunConfig(dp_noise_multiplier=1.0, act_clip_norm=30.0, act_noise_multiplier=4.0,
                       label_protection="randomized-response", label_epsilon=1.0)
    privacy = ServerPrivacy(config, tmp_path)
    assert privacy.observe(11, _reply("alice", [ACT, DP, DP_SERVER, RR])) is None
    metrics = privacy.round_metrics()
    assert metrics["epsilon_server_certified"] >= metrics["epsilon_activation"] + metrics["epsilon_label"]
    # Unamplified DP-SGD against the server is far weaker than the amplified guarantee of the released model.
    assert metrics["epsilon_model_certified"] < 1.0
    for weaker in (dict(label_protection="clear"), dict(act_noise_multiplier=0.0, act_clip_norm=0.0),
                   dict(dp_noise_multiplier=0.0), dict(label_protection="u-shape")):
        fields = {**config.__dict__, **weaker}
        other = ServerPrivacy(RunConfig(**fields), tmp_path / str(len(fields)) / str(sorted(weaker)))
        other.observe(11, _reply("alice", [ACT, DP, DP_SERVER, RR]))
        assert other.round_metrics()["epsilon_server_certified"] is None, weaker


def test_a_client_id_is_bound_to_one_node(tmp_path):
    privacy = ServerPrivacy(RunConfig(dp_noise_multiplier=1.0), tmp_path)
    assert privacy.observe(1, _reply("partition-0", [DP])) is None
    assert "already bound to node 1" in privacy.observe(2, _reply("partition-0", [DP]))
    assert "bound to 'partition-0'" in privacy.observe(1, _reply("partition-1", [DP]))
    assert privacy.ledger.events("partition-0", "dp-sgd")[0].steps == 30  # the refused replies recorded nothing


def test_missing_or_malformed_privacy_records_are_rejected_when_private(tmp_path):
    privacy = ServerPrivacy(RunConfig(dp_noise_multiplier=1.0), tmp_path)
    assert "no privacy record" in privacy.observe(3, RecordDict({}))
    bad = proto.encode_privacy("eve", [DP])
    bad["steps"] = [0]
    assert "malformed" in privacy.observe(3, RecordDict({proto.PRIVACY: bad}))
    assert privacy.ledger.clients() == []


def test_under_counted_dp_steps_are_rejected(tmp_path):
    privacy = ServerPrivacy(RunConfig(dp_noise_multiplier=1.0), tmp_path)
    privacy.begin_round()
    privacy.observe(5, _reply("alice", [DP]))  # the round's chunks report 30 steps
    final = _reply("alice", [])
    assert privacy.check_final(5, final, steps_driven=30) is None
    assert "reported 30 DP-SGD steps but trained 31" in privacy.check_final(5, final, steps_driven=31)
    privacy.begin_round()  # a new round starts from zero
    assert "reported 0 DP-SGD steps" in privacy.check_final(5, final, steps_driven=1)


def test_a_client_over_budget_is_no_longer_sampled(tmp_path):
    one_round = ServerPrivacy(RunConfig(dp_noise_multiplier=1.0), tmp_path)
    one_round.observe(1, _reply("alice", [DP]))
    eps1 = one_round.round_metrics()["epsilon_model_certified"]
    privacy = ServerPrivacy(RunConfig(dp_noise_multiplier=1.0, max_epsilon=eps1 * 1.2), tmp_path)
    privacy.observe(1, _reply("alice", [DP]))
    privacy.observe(2, _reply("bob", [MechanismEvent("dp-sgd", noise_multiplier=5.0, sample_rate=0.01, steps=30,
                                                     relation="replace-one")]))
    privacy.update_budgets()
    assert not privacy.eligible(1) and privacy.eligible(2) and privacy.eligible(99)
    assert "max-epsilon" in privacy.excluded["alice"]

    class Grid:
        def get_node_ids(self):
            return [1, 2, 99]

        def other(self):
            return "delegated"

    view = EligibleGrid(Grid(), privacy)
    assert view.get_node_ids() == [2, 99] and view.other() == "delegated"


def test_no_mechanism_means_no_epsilon_not_zero(tmp_path):
    privacy = ServerPrivacy(RunConfig(), tmp_path)
    assert privacy.observe(1, RecordDict({})) is None  # nothing configured, nothing required
    metrics = privacy.round_metrics()
    assert metrics["epsilon_model_certified"] is None and metrics["epsilon_activation"] is None
    assert metrics["epsilon_server_certified"] is None


def test_rdp_column_is_opacus_rdp_for_add_remove_and_never_below_the_certified_bound(tmp_path):
    add_remove = MechanismEvent("dp-sgd", noise_multiplier=1.0, sample_rate=0.01, steps=30)
    privacy = ServerPrivacy(RunConfig(dp_noise_multiplier=1.0, accountant="rdp"), tmp_path)
    privacy.observe(1, _reply("alice", [add_remove]))
    metrics = privacy.round_metrics()
    assert metrics["epsilon_model_estimate"] == rdp_epsilon([add_remove], 1e-5)
    assert metrics["epsilon_model_estimate"] >= metrics["epsilon_model_certified"] * 0.99
    # Opacus has no replace-one analysis of the sampled Gaussian: the certified bound is logged instead.
    replace = ServerPrivacy(RunConfig(dp_noise_multiplier=1.0, accountant="rdp"), tmp_path / "r")
    replace.observe(1, _reply("alice", [DP]))
    metrics = replace.round_metrics()
    assert metrics["epsilon_model_estimate"] == metrics["epsilon_model_certified"]


def test_an_unreachable_target_epsilon_fails_before_training():
    import pytest

    from fedguard.apps.server_app import check_dp_target

    check_dp_target(RunConfig(dp_target_epsilon=8.0), train_size=67_349, num_nodes=3)  # reachable: no error
    with pytest.raises(ValueError, match="dp-target-epsilon=0.5 cannot be reached over 1000000 steps"):
        check_dp_target(RunConfig(dp_target_epsilon=0.5, num_server_rounds=1000, local_steps=1000, batch_size=60_000),
                        train_size=67_349, num_nodes=3)


def test_rdp_column_counts_pure_epsilon_events():
    """A pure ε event (label randomised response, d_χ) is spent, not skipped: one costs at least its ε, more
    cost more, and beside a Gaussian history they add."""
    gaussian = MechanismEvent("dp-sgd", noise_multiplier=1.0, sample_rate=0.01, steps=30)
    once, thrice = (MechanismEvent("label-rr", epsilon=1.0, steps=k) for k in (1, 3))
    assert 1.0 <= rdp_epsilon([once], 1e-5) < rdp_epsilon([thrice], 1e-5)
    assert rdp_epsilon([gaussian, once], 1e-5) > rdp_epsilon([gaussian], 1e-5)
