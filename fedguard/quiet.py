"""Keep library chatter (load reports, progress bars) out of FedGuard's run output."""

from __future__ import annotations


def quiet_libraries() -> None:
    """Silence transformers' load reports and datasets' progress bars in this process."""
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
