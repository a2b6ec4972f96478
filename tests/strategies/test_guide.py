"""docs/writing-a-strategy.md: its Python code blocks run as printed, and its example is short."""

from __future__ import annotations

import re
from pathlib import Path

from fedguard.config import RunConfig
from strategies import AdapterStrategy, build_strategy

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "writing-a-strategy.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", GUIDE.read_text(), flags=re.DOTALL)


def test_guide_code_runs_as_printed(capsys):
    blocks = python_blocks()
    assert len(blocks) >= 3
    namespace: dict = {"__name__": "writing_a_strategy"}
    for block in blocks:
        exec(compile(block, str(GUIDE), "exec"), namespace)  # noqa: S102 - the guide is ours
    assert "server step norm:" in capsys.readouterr().out
    strategy_class = namespace["ServerStepFedAvg"]
    assert issubclass(strategy_class, AdapterStrategy)
    assert callable(namespace["fedprox"])


def test_guide_example_is_complete_in_under_60_lines():
    example, check = python_blocks()[:2]
    assert len(example.strip().splitlines()) + len(check.strip().splitlines()) < 60


def test_guide_lists_every_builtin_and_config_key():
    text = GUIDE.read_text()
    from strategies import BUILTINS
    for name in BUILTINS:
        assert f"`{name}`" in text
    for key in RunConfig().to_dict():
        if key.startswith("strategy-"):
            assert key in text, key
    assert build_strategy(RunConfig()).__class__.__name__ == "FedAvgAdapters"
