"""Test access to the isolated `flwr run .` runner (see fedguard.apps.local_run)."""

from fedguard.apps.local_run import ROOT, flwr_run

__all__ = ["ROOT", "flwr_run"]
