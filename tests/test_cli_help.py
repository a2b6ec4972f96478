"""Every ``fedguard`` command's ``--help`` says what it does for the user and shows an example command line."""

from __future__ import annotations

import pytest

from fedguard.cli import main

COMMANDS = [[], ["privacy"], ["privacy", "epsilon"], ["privacy", "sigma"], ["privacy", "ledger"], ["attack"],
            ["report"], ["check"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "fedguard")
def test_help_describes_the_command_with_an_example(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "subcommands register themselves" not in text  # no developer docstring
    assert "example" in text.lower()
    prefix = " ".join(["fedguard", *command])
    examples = [line.strip() for line in text.splitlines() if line.strip().startswith(prefix + " ")]
    assert examples, f"no example line starting with {prefix!r}"
    assert all(len(line) <= 110 for line in text.splitlines()), "help lines are wrapped for a terminal"


def test_top_level_help_names_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for command in ("privacy", "attack", "report", "check"):
        assert f"\n  {command} " in text
