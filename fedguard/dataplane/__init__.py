"""The split data plane: hidden states and gradients over a direct, pinned-TLS, ticketed stream between each
client's ClientApp and the ServerApp, so a round costs one Flower message per client (see
:mod:`fedguard.dataplane.server`, :mod:`fedguard.dataplane.client`, :mod:`fedguard.dataplane.frames`)."""
