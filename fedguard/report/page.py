"""The report page: one section per part of the run, each left out when the run has no such part."""

from __future__ import annotations

import json
from collections.abc import Mapping
from html import escape
from typing import Any

from fedguard.report.epsilon import (
    ADVERSARIES,
    EPSILON_FIELDS,
    epsilon_series,
    privacy_delta,
    privacy_notes,
    server_view_unprotected,
)
from fedguard.report.html_parts import Cell, Header, fmt, image, paragraph, section, table
from fedguard.report.plots import TIME_PARTS
from fedguard.report.run_files import RunFiles

__all__ = ["render_page"]

READING_GUIDE = (
    "Accuracy, loss, bytes and seconds are measurements of this run. A privacy guarantee (a certified ε) is a "
    "mathematical upper bound: whatever an adversary does with what it saw, it can learn at most that much about "
    "any one training example (with probability at least 1 − δ); smaller ε means more private. An estimate is "
    "an approximation of ε that can be too low, so it is not a guarantee. An attack result is an experiment: "
    "an attack that finds nothing does not prove that no other attack could.")

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; vertical-align: top; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th[data-kind="guarantee"] { background: #e6f2e6; }
th[data-kind="estimate"] { background: #fff4d6; font-style: italic; }
.error { background: #fde2e2; border: 2px solid #c00; padding: 0.8em; font-weight: bold; }
.guide { background: #eef3fb; padding: 0.6em 0.8em; }
.text { white-space: pre-wrap; max-width: 30em; }
figure { margin: 0.5em 0; } img { max-width: 100%; }
"""


def render_page(run: RunFiles, images: Mapping[str, bytes]) -> str:
    """The whole self-contained HTML page (plots from ``images`` embedded as data URIs)."""
    name = run.run_dir.resolve().name
    parts = [_error(run), _summary(run), _configuration(run), _quality(run, images), _privacy(run, images),
             _communication(run, images), _clients(run), _attacks(run), _generations(run)]
    body = "\n".join(p for p in parts if p)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>FedGuard run report: {escape(name)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
            f"<h1>FedGuard run report: {escape(name)}</h1>\n{body}\n</body>\n</html>\n")


def _error(run: RunFiles) -> str:
    error = run.metrics.get("error")
    if not error:
        return ""
    return f'<div id="error" class="error">This run ended with an error: {escape(str(error))}</div>'


def _summary(run: RunFiles) -> str:
    metrics, rounds = run.metrics, run.rounds
    items = {"rounds completed": fmt(len(rounds))}
    if run.config and "num-server-rounds" in run.config:
        items["rounds planned"] = fmt(run.config["num-server-rounds"])
    for key in ("final_accuracy", "best_accuracy", "best_round", "final_perplexity"):
        if metrics.get(key) is not None:
            items[key.replace("_", " ")] = fmt(metrics[key])
    rows = [[label, Cell(value)] for label, value in items.items()]
    return section("summary", "Summary", table("summary-table", ["", "value"], rows),
                   paragraph(READING_GUIDE, "guide"))


def _configuration(run: RunFiles) -> str:
    if not run.config:
        return ""
    rows = [[key, Cell(json.dumps(value) if not isinstance(value, str) else value)]
            for key, value in run.config.items()]
    return section("configuration", "Configuration", paragraph("The resolved run configuration (config.json)."),
                   table("config-table", ["key", "value"], rows))


def _quality(run: RunFiles, images: Mapping[str, bytes]) -> str:
    rounds = run.rounds
    initial = run.metrics.get("initial")
    if not rounds and not initial:
        return ""
    perplexity = any(r.get("perplexity") is not None for r in rounds)
    baseline = run.baseline.by_round() if run.baseline else None
    headers = ["round", "accuracy", "loss"] + (["perplexity"] if perplexity else [])
    if baseline is not None:
        headers += [f"{run.baseline.label} accuracy", "gap (points)"]
    entries = ([{"round": 0, **initial}] if initial else []) + rounds
    rows = []
    for entry in entries:
        row = [Cell(str(entry["round"]), entry["round"], "num"), Cell.number(entry.get("accuracy")),
               Cell.number(entry.get("loss"))]
        if perplexity:
            row.append(Cell.number(entry.get("perplexity")))
        if baseline is not None:
            central = baseline.get(entry["round"], {}).get("accuracy")
            gap = (100 * (central - entry["accuracy"]) if central is not None
                   and isinstance(entry.get("accuracy"), (int, float)) else None)
            row += [Cell.number(central), Cell.number(gap, 3)]
        rows.append(row)
    notes = [paragraph("Held-out accuracy and loss after each round; round 0 is the model before training."
                       + (" For a causal LM the accuracy is next-token accuracy on response tokens and perplexity "
                          "is exp(loss); lower loss and perplexity are better." if perplexity else ""))]
    if run.baseline is not None:
        notes.append(paragraph(f"Baseline: {run.baseline.label} ({run.baseline.source.name}): the same model "
                               "trained centrally on the same number of examples; gap = baseline − federated."))
    return section("quality", "Accuracy and loss per round", *notes, _image(images, "quality"),
                   table("quality-table", headers, rows))


def _privacy(run: RunFiles, images: Mapping[str, bytes]) -> str:
    series = epsilon_series(run.rounds)
    notes = privacy_notes(run.metrics)
    if not series and "privacy" not in run.metrics:
        return ""
    delta = privacy_delta(run.metrics)
    parts = [paragraph(
        "ε measures how much someone could learn about any one training example; smaller is more private. "
        "Numbers marked “guarantee” are certified upper bounds: they hold whatever the adversary does. Numbers "
        "marked “estimate, not a guarantee” are approximations (dashed lines) and may be too low. Each ε is for "
        "the worst client so far unless marked “median client”. A missing value means no guarantee.", "guide"),
        (f'<p id="privacy-delta" data-value="{delta!r}">δ = {fmt(delta)}: the ε values hold except with '
         "probability δ.</p>") if delta is not None else '<p id="privacy-delta">δ was not recorded.</p>']
    if "neighbouring" in notes:
        parts.append(paragraph(f"Neighbouring relation (what “one example” means): {notes['neighbouring']}"))
    parts.append(_adversary_list(run, series, notes))
    if series:
        headers: list[str | Header] = ["round"] + [
            Header(f.label, (("key", f.key), ("kind", "guarantee" if f.guarantee else "estimate"),
                             ("adversary", f.adversary))) for f in series]
        rows = [[Cell(str(r["round"]), r["round"], "num")] + [Cell.number(values[i]) for values in series.values()]
                for i, r in enumerate(run.rounds)]
        parts += [_image(images, "epsilon"), table("privacy-table", headers, rows)]
    return section("privacy", "Privacy: ε per adversary", *parts)


def _adversary_list(run: RunFiles, series: Mapping[Any, list[float | None]], notes: Mapping[str, str]) -> str:
    items = []
    for adversary, description in ADVERSARIES.items():
        fields = [f for f in EPSILON_FIELDS if f.adversary == adversary and f in series]
        if adversary == "adapter" and not fields:
            continue
        last = [(f, series[f][-1]) for f in fields if series[f][-1] is not None]
        shown = [f"ε = {fmt(v)} ({f.release}, {f.statistic}, "
                 f"{'guarantee' if f.guarantee else 'estimate, not a guarantee'})" for f, v in last]
        if adversary == "server" and shown and server_view_unprotected(run.rounds):
            shown.insert(0, "no guarantee on everything it sees together (part of it reaches it in clear)")
        text = "; ".join(shown) or "no guarantee"
        if adversary in notes:
            text += f" — {notes[adversary]}"
        items.append(f'<li data-adversary="{adversary}"><b>Against {escape(description)}:</b> {escape(text)}</li>')
    return '<ul id="privacy-adversaries">\n' + "\n".join(items) + "\n</ul>"


def _communication(run: RunFiles, images: Mapping[str, bytes]) -> str:
    rounds = run.rounds
    if not rounds:
        return ""
    headers = ["round", "MB up", "MB down", "seconds"] + [f"{label} s" for _, label in TIME_PARTS]
    rows = [[Cell(str(r["round"]), r["round"], "num"), _megabytes(r.get("bytes_up")), _megabytes(r.get("bytes_down")),
             Cell.number(r.get("seconds"), 3)] + [Cell.number(r.get(key), 3) for key, _ in TIME_PARTS]
            for r in rounds]
    return section("communication", "Communication and time per round",
                   paragraph("Payload bytes (tensors, without protocol framing) and where each round's wall time "
                             "went."), _image(images, "traffic"), _image(images, "time"),
                   table("communication-table", headers, rows))


def _megabytes(value: Any) -> Cell:
    if not isinstance(value, (int, float)):
        return Cell.number(None)
    return Cell(fmt(value / 1e6), value, "num")


def _clients(run: RunFiles) -> str:
    rows = []
    for entry in run.rounds:
        for outcome, key in (("dropped", "clients_dropped"), ("refused", "clients_refused")):
            for client, reason in sorted((entry.get(key) or {}).items()):
                rows.append([Cell(str(entry["round"]), entry["round"], "num"), client, outcome, str(reason)])
    if not rows:
        return ""
    return section("clients", "Dropped and refused clients",
                   paragraph("Dropped: the server excluded the client's reply from the round (error, timeout, bad "
                             "update). Refused: the client declined the round itself, to stay within its privacy "
                             "budget."), table("clients-table", ["round", "client", "outcome", "reason"], rows))


def _attacks(run: RunFiles) -> str:
    if not run.attacks:
        return ""
    rows = []
    for name, entry in run.attacks.items():
        numbers = entry.get("metrics") or {}
        listed = "; ".join(f"{k} = {fmt(v)}" for k, v in numbers.items() if not isinstance(v, (dict, list)))
        rows.append([name, Cell(str(entry.get("verdict", "–")), css="text"), Cell(listed, css="text"),
                     Cell(str(entry.get("threat", "–")), css="text")])
    return section("attacks", "Attacks against this run",
                   paragraph("Results of fedguard attack: each attack plays an adversary against what this run "
                             "released. These are measurements, not guarantees: an attack that finds nothing does "
                             "not prove that a better attack would not."),
                   table("attacks-table", ["attack", "verdict", "numbers", "adversary"], rows))


def _generations(run: RunFiles) -> str:
    if not run.generations:
        return ""
    rows = [[Cell(str(g.get("round", "–")), g.get("round"), "num"), Cell(str(g.get("prompt", "")), css="text"),
             Cell(str(g.get("reference", "")), css="text"), Cell(str(g.get("generation", "")), css="text")]
            for g in run.generations]
    parts = [paragraph("Greedy generations of the model for fixed held-out prompts after each round (round 0 = "
                       "before training).")]
    if run.unreadable_generations:
        parts.append(paragraph(f"{run.unreadable_generations} line(s) of generations.jsonl could not be read and "
                               "are not shown."))
    return section("generations", "Generations", *parts,
                   table("generations-table", ["round", "prompt", "reference", "generation"], rows))


def _image(images: Mapping[str, bytes], name: str) -> str:
    alts = {"quality": "accuracy and loss per round", "traffic": "payload megabytes per round",
            "time": "split of each round's time", "epsilon": "ε per round: solid = guarantee, dashed = estimate"}
    return image(images[name], alts[name], name) if name in images else ""
