"""Empirical privacy attacks against a finished FedGuard run (``fedguard attack``; see docs/attacks.md).

* :mod:`~fedguard.attacks.metrics` — token recovery, ROUGE-L, token-set F1, ROC AUC, TPR at a given FPR;
* :mod:`~fedguard.attacks.inversion` — text reconstruction from the activations a client sent (the server
  as adversary): nearest-neighbour inversion, a learned inverter, averaging an example's releases;
* :mod:`~fedguard.attacks.optimisation` — optimisation-based inversion (BiSR/PIA style) under the noise
  likelihood with a bigram prior;
* :mod:`~fedguard.attacks.client_weights` — the client half as the server can rebuild it (base, per-round
  and final client adapters);
* :mod:`~fedguard.attacks.membership` — loss-threshold and calibrated membership inference on the released model;
* :mod:`~fedguard.attacks.canaries` — canary exposure (rank of an inserted secret among all candidates) and
  label-flip memorisation; :mod:`~fedguard.attacks.exposure` runs them against a run with ``canaries``;
* :mod:`~fedguard.attacks.run_dir` — what a run captured (``capture-activations``), loaded for the attacks;
* :mod:`~fedguard.attacks.report` — runs them against a run directory, writes ``attack_report.json``.
"""
