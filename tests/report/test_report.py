"""``fedguard report RUN_DIR``: the page shows each part of a run as its files record it, and only the parts it has.

Run directories are built by hand; the produced HTML is parsed (stdlib ``html.parser``) and compared with the
``metrics.json`` it was made from.
"""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser
from pathlib import Path

import pytest

from fedguard.cli import main
from fedguard.report.run_files import ReportError
from fedguard.report.writer import write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def round_entry(n: int, **extra) -> dict:
    return {"round": n, "accuracy": 0.75 + 0.0312345 * n, "loss": 0.6 - 0.05 * n, "bytes_up": 87_000_000 + n,
            "bytes_down": 86_500_000 + n, "seconds": 48.0 + n, "client_seconds": 10.0, "server_seconds": 19.0 + n,
            "messaging_seconds": 13.0, "eval_seconds": 5.0, "exchanges": 31, "train_loss": 0.5,
            "clients_sampled": 3, "clients_aggregated": 3, "clients_dropped": {}, "clients_refused": {},
            "perplexity": None, "epsilon_model_certified": None, "epsilon_model_estimate": None, **extra}


def make_run(path: Path, rounds: list[dict], config: dict | None = None, **top) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    metrics = {"initial": {"accuracy": 0.469, "loss": 0.69, "perplexity": None, "eval_examples": 872},
               "rounds": rounds, **top}
    (path / "metrics.json").write_text(json.dumps(metrics))
    (path / "config.json").write_text(json.dumps(config or {"num-server-rounds": len(rounds), "lora-r": 8,
                                                            "task": "classification", "strategy": "auto"}))
    return path


class Page(HTMLParser):
    """The parts of the report the tests look at: sections, tables (cells with their data-value), images, links."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.tables: dict[str, dict] = {}
        self.images: list[dict[str, str]] = []
        self.urls: list[str] = []
        self.ids: dict[str, str] = {}
        self._table = self._row = self._cell = None
        self._id_stack: list[tuple[str, str, list[str]]] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("src", "href"):
            if key in attrs:
                self.urls.append(attrs[key])
        if tag == "section":
            self.sections.append(attrs["id"])
        if tag == "table":
            self._table = {"headers": [], "header_attrs": [], "rows": []}
            self.tables[attrs["id"]] = self._table
        elif tag == "tr" and self._table is not None:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = {"text": "", "value": attrs.get("data-value"), "attrs": attrs}
        elif tag == "img":
            self.images.append(attrs)
        if "id" in attrs and tag not in ("section", "table"):
            self._id_stack.append((tag, attrs["id"], []))

    def handle_data(self, data):
        if self._cell is not None:
            self._cell["text"] += data
        for _, _, texts in self._id_stack:
            texts.append(data)

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            if tag == "th":
                self._table["headers"].append(self._cell["text"])
                self._table["header_attrs"].append(self._cell["attrs"])
            else:
                self._row.append(self._cell)
            self._cell = None
        elif tag == "tr" and self._row is not None:
            if self._row:
                self._table["rows"].append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None
        if self._id_stack and self._id_stack[-1][0] == tag:
            _, ident, texts = self._id_stack.pop()
            self.ids[ident] = "".join(texts)

    def column(self, table: str, header: str) -> list[dict]:
        index = self.tables[table]["headers"].index(header)
        return [row[index] for row in self.tables[table]["rows"]]


def report(run_dir: Path, baseline: Path | None = None) -> Page:
    path = write_report(run_dir, baseline)
    assert path == run_dir / "report.html"
    return Page(path.read_text(encoding="utf-8"))


def test_accuracy_and_loss_tables_equal_metrics_json(tmp_path):
    rounds = [round_entry(1), round_entry(2), round_entry(3)]
    page = report(make_run(tmp_path / "run", rounds))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [c["text"] for c in page.column("quality-table", "round")] == ["0", "1", "2", "3"]
    expected = [metrics["initial"]] + metrics["rounds"]
    for header, key in (("accuracy", "accuracy"), ("loss", "loss")):
        cells = page.column("quality-table", header)
        assert [float(c["value"]) for c in cells] == [e[key] for e in expected]  # exact
        assert [c["text"] for c in cells] == [f"{e[key]:.4g}" for e in expected]  # rounded for people
    assert "perplexity" not in page.tables["quality-table"]["headers"]
    assert page.sections[:4] == ["summary", "configuration", "quality", "communication"]


def test_configuration_section_lists_config_json(tmp_path):
    config = {"num-server-rounds": 2, "lora-r": 4, "model": "", "group-by-length": True}
    page = report(make_run(tmp_path / "run", [round_entry(1), round_entry(2)], config))
    rows = {row[0]["text"]: row[1]["text"] for row in page.tables["config-table"]["rows"]}
    assert rows == {"num-server-rounds": "2", "lora-r": "4", "model": "", "group-by-length": "true"}


def test_page_is_self_contained_with_embedded_pngs_also_written_as_files(tmp_path):
    run = make_run(tmp_path / "run", [round_entry(1), round_entry(2)])
    page = report(run)
    assert page.images, "the page has plots"
    for img in page.images:
        assert img["src"].startswith("data:image/png;base64,")
        png = base64.b64decode(img["src"].split(",", 1)[1])
        assert png.startswith(PNG_MAGIC)
        assert (run / "report" / f"{img['data-name']}.png").read_bytes() == png
    assert {p.name for p in (run / "report").iterdir()} == {"quality.png", "traffic.png", "time.png"}
    text = (run / "report.html").read_text()
    assert "http://" not in text and "https://" not in text and "<script" not in text
    assert all(u.startswith("data:") for u in page.urls)


def test_communication_table_has_bytes_and_the_time_split(tmp_path):
    rounds = [round_entry(1), round_entry(2)]
    page = report(make_run(tmp_path / "run", rounds))
    assert [int(c["value"]) for c in page.column("communication-table", "MB up")] == [r["bytes_up"] for r in rounds]
    assert [c["text"] for c in page.column("communication-table", "MB down")] == ["86.5", "86.5"]
    assert [float(c["value"]) for c in page.column("communication-table", "server s")] == [20.0, 21.0]
    assert [float(c["value"]) for c in page.column("communication-table", "messaging / waiting s")] == [13.0, 13.0]


def test_a_run_without_privacy_attacks_generations_or_baseline_has_no_such_sections(tmp_path):
    page = report(make_run(tmp_path / "run", [round_entry(1), round_entry(2)]))
    for absent in ("privacy", "attacks", "generations", "clients", "error"):
        assert absent not in page.sections and absent not in page.ids
    assert not any("baseline" in h for h in page.tables["quality-table"]["headers"])
    assert "A privacy guarantee (a certified ε) is a mathematical upper bound" in \
        (tmp_path / "run" / "report.html").read_text()  # the plain-words guide is on every page


def test_privacy_table_separates_guarantees_from_estimates_and_states_delta(tmp_path):
    rounds = [round_entry(1, epsilon_model_certified=4.0, epsilon_model_certified_median=3.5,
                          epsilon_model_estimate=1.5, epsilon_server_certified=None, epsilon_activation=1.02e5,
                          privacy_delta=1e-5),
              round_entry(2, epsilon_model_certified=8.0, epsilon_model_certified_median=7.0,
                          epsilon_model_estimate=2.64, epsilon_server_certified=None, epsilon_activation=2.04e5,
                          privacy_delta=1e-5)]
    privacy = {"delta": 1e-5, "neighbouring": "replace-one example within a client's shard",
               "model": "DP-SGD on the client adapter and the server half",
               "server": "labels reach the server in clear: no guarantee"}
    page = report(make_run(tmp_path / "run", rounds, privacy=privacy))
    assert "privacy" in page.sections
    table = page.tables["privacy-table"]
    kinds = {a["data-key"]: a["data-kind"] for a in table["header_attrs"] if "data-key" in a}
    assert kinds == {"epsilon_model_certified": "guarantee", "epsilon_model_certified_median": "guarantee",
                     "epsilon_model_estimate": "estimate", "epsilon_activation": "guarantee"}
    labels = dict(zip([a.get("data-key") for a in table["header_attrs"]], table["headers"]))
    assert labels["epsilon_model_certified"].endswith("worst client (guarantee)")
    assert labels["epsilon_model_certified_median"].endswith("median client (guarantee)")
    assert labels["epsilon_model_estimate"].endswith("(estimate, not a guarantee)")
    for key in kinds:
        assert [float(c["value"]) for c in page.column("privacy-table", labels[key])] == [r[key] for r in rounds]
    assert "epsilon_server_certified" not in kinds  # null in every round: no column, stated below instead
    assert "δ = 1e-05" in page.ids["privacy-delta"]
    adversaries = page.ids["privacy-adversaries"]
    assert "Against third parties who see only the released model: ε = 8 (released model (DP-SGD), worst client, " \
           "guarantee)" in adversaries
    assert "ε = 2.64 (released model (DP-SGD), worst client, estimate, not a guarantee)" in adversaries
    server = adversaries[adversaries.index("Against the server"):]
    assert server.startswith("Against the server, which sees the activations, labels and adapter updates: no "
                             "guarantee on everything it sees together (part of it reaches it in clear); ε = 2.04e+05 "
                             "(activations, worst client, guarantee)")
    assert server.rstrip().endswith("— labels reach the server in clear: no guarantee")
    text = (tmp_path / "run" / "report.html").read_text()
    assert "replace-one example within a client&#x27;s shard" in text
    assert (tmp_path / "run" / "report" / "epsilon.png").read_bytes().startswith(PNG_MAGIC)


def test_legacy_adapter_fields_are_shown_as_adapter_legacy(tmp_path):
    rounds = [round_entry(1, epsilon_adapter_certified=2.0, epsilon_adapter_estimate=0.9, privacy_delta=1e-6)]
    page = report(make_run(tmp_path / "run", rounds))
    headers = page.tables["privacy-table"]["headers"]
    assert "adapter, legacy, worst client (guarantee)" in headers
    assert "adapter, legacy, worst client (estimate, not a guarantee)" in headers
    assert "δ = 1e-06" in page.ids["privacy-delta"]


def test_dropped_and_refused_clients_are_listed_with_their_reasons(tmp_path):
    rounds = [round_entry(1, clients_dropped={"12": "client error: timeout"}),
              round_entry(2, clients_refused={"7": "privacy budget spent"})]
    page = report(make_run(tmp_path / "run", rounds))
    assert [[c["text"] for c in row] for row in page.tables["clients-table"]["rows"]] == [
        ["1", "12", "dropped", "client error: timeout"], ["2", "7", "refused", "privacy budget spent"]]


def test_attack_verdicts_and_numbers_come_from_metrics_and_attack_report(tmp_path):
    attacks = {"report": "attack_report.json",
               "membership": {"metrics": {"auc": 0.5123, "advantage": 0.02}, "verdict": "membership inference: "
                              "no membership signal detected"}}
    run = make_run(tmp_path / "run", [round_entry(1)], attacks=attacks)
    (run / "attack_report.json").write_text(json.dumps({"attacks": {
        "membership": {"metrics": {"auc": 0.5123, "advantage": 0.02}, "verdict": attacks["membership"]["verdict"],
                       "threat": "anyone holding the released model"},
        "nn-inversion": {"metrics": {"content_token_recovery_rate": 0.61}, "verdict": "nearest-neighbour "
                         "inversion: LEAKY (severe)", "threat": "honest-but-curious server"}}}))
    page = report(run)
    rows = {row[0]["text"]: [c["text"] for c in row[1:]] for row in page.tables["attacks-table"]["rows"]}
    assert set(rows) == {"membership", "nn-inversion"}
    assert rows["membership"] == ["membership inference: no membership signal detected",
                                  "auc = 0.5123; advantage = 0.02", "anyone holding the released model"]
    assert rows["nn-inversion"][0] == "nearest-neighbour inversion: LEAKY (severe)"
    assert rows["nn-inversion"][1] == "content_token_recovery_rate = 0.61"


def test_causal_lm_run_shows_perplexity_and_generations(tmp_path):
    rounds = [round_entry(1, perplexity=6.18), round_entry(2, perplexity=5.91)]
    run = make_run(tmp_path / "run", rounds, final_perplexity=5.91)
    generations = [{"round": r, "prompt": f"Fix: {r} <b>", "reference": "ref", "generation": f"answer {r}"}
                   for r in (0, 1, 2)]
    (run / "generations.jsonl").write_text("\n".join(json.dumps(g) for g in generations) + "\n{\"round\": 3, ")
    page = report(run)
    assert [c["value"] for c in page.column("quality-table", "perplexity")] == ["null", "6.18", "5.91"]
    rows = [[c["text"] for c in row] for row in page.tables["generations-table"]["rows"]]
    assert rows == [[str(g["round"]), g["prompt"], g["reference"], g["generation"]] for g in generations]
    assert "1 line(s) of generations.jsonl could not be read" in (run / "report.html").read_text()


def test_baseline_file_is_shown_beside_the_federated_accuracy(tmp_path):
    rounds = [round_entry(1), round_entry(2)]
    run = make_run(tmp_path / "run", rounds)
    baseline = tmp_path / "central.json"
    baseline.write_text(json.dumps({"label": "centralized LoRA", "rounds": [{"round": 1, "accuracy": 0.79},
                                                                             {"round": 2, "accuracy": 0.8245}]}))
    page = report(run, baseline)
    assert [c["value"] for c in page.column("quality-table", "centralized LoRA accuracy")] == ["null", "0.79",
                                                                                             "0.8245"]
    gaps = [c["value"] for c in page.column("quality-table", "gap (points)")]
    assert gaps[0] == "null" and float(gaps[2]) == pytest.approx(100 * (0.8245 - rounds[1]["accuracy"]))

    (run / "baseline.json").write_text(json.dumps([{"round": 1, "accuracy": 0.5}]))  # found without --baseline
    page = report(run)
    assert [c["value"] for c in page.column("quality-table", "centralized baseline accuracy")][1] == "0.5"


def test_a_bad_baseline_file_says_what_is_expected(tmp_path):
    run = make_run(tmp_path / "run", [round_entry(1)])
    (tmp_path / "bad.json").write_text(json.dumps({"rounds": [{"round": 1}]}))
    with pytest.raises(ReportError, match=r"bad.json: expected \{\"label\""):
        write_report(run, tmp_path / "bad.json")


def test_the_error_that_ended_a_run_is_shown_first(tmp_path):
    page = report(make_run(tmp_path / "run", [round_entry(1)], error="RuntimeError: out of memory in round 2"))
    assert page.ids["error"] == "This run ended with an error: RuntimeError: out of memory in round 2"
    text = (tmp_path / "run" / "report.html").read_text()
    assert text.index('id="error"') < text.index('<section id="summary"')


def test_a_run_that_ended_before_round_1_still_gets_a_page(tmp_path):
    page = report(make_run(tmp_path / "run", [], error="ConfigError: bad key"))
    assert [c["text"] for c in page.column("quality-table", "round")] == ["0"]
    assert "communication" not in page.sections


def test_cli_writes_the_report_and_prints_where(tmp_path, capsys):
    run = make_run(tmp_path / "run", [round_entry(1), round_entry(2)])
    assert main(["report", str(run)]) == 0
    assert capsys.readouterr().out.strip() == f"report: {run / 'report.html'}"
    assert Page((run / "report.html").read_text()).sections[0] == "summary"


def test_cli_without_metrics_json_is_a_one_line_error_with_exit_code_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fedguard: error: ") and "metrics.json not found" in err
    assert not (tmp_path / "empty" / "report.html").exists()
