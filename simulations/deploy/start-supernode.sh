#!/usr/bin/env bash
# Start one SuperNode (foreground) that connects to the SuperLink over TLS and authenticates with its key.
# Usage: start-supernode.sh SUPERLINK_HOST:PORT CA_CERT KEYFILE NODE_CONFIG [RUNTIME_PORT]
#   NODE_CONFIG: its data and privacy ledger, e.g.
#     "partition-id=0 num-partitions=3 ledger-path='/var/lib/fedguard/ledger-0.json'"
#     "dataset='/data/site-a/train.csv' ledger-path='/var/lib/fedguard/ledger.json'"
#   RUNTIME_PORT: local port of this SuperNode's Runtime API (default 9094; give each SuperNode on the
#     same host its own).
# Environment: FLWR_SUPEREXEC_TASK_POLL_INTERVAL (seconds, default here 0.1) - how often the SuperNode's
#   SuperExec looks for a ClientApp task to start (Flower's default is 1.0).
set -euo pipefail
[[ $# -ge 4 && $# -le 5 ]] || { echo "usage: $0 SUPERLINK_HOST:PORT CA_CERT KEYFILE NODE_CONFIG [RUNTIME_PORT]" >&2; exit 2; }
superlink=$1 ca=$2 key=$3 node_config=$4 runtime_port=${5:-9094}
[[ $superlink == *:* ]] || { echo "error: SuperLink address '$superlink' must be HOST:PORT" >&2; exit 2; }
[[ -f $ca ]] || { echo "error: CA certificate '$ca' not found" >&2; exit 1; }
[[ -f $key ]] || { echo "error: SuperNode private key '$key' not found (make-supernode-key.sh)" >&2; exit 1; }
if [[ $node_config != *partition-id=* && $node_config != *dataset=* ]]; then
  echo "error: NODE_CONFIG must name the data: partition-id=I num-partitions=N, or dataset=PATH" >&2; exit 2
fi
if [[ $node_config == *partition-id=* && $node_config != *num-partitions=* ]]; then
  echo "error: NODE_CONFIG has partition-id but no num-partitions" >&2; exit 2
fi
[[ $node_config == *ledger-path=* ]] || echo "warning: NODE_CONFIG has no ledger-path: this node keeps no on-disk privacy ledger" >&2
export FLWR_SUPEREXEC_TASK_POLL_INTERVAL=${FLWR_SUPEREXEC_TASK_POLL_INTERVAL:-0.1}
export FLWR_TELEMETRY_ENABLED=${FLWR_TELEMETRY_ENABLED:-0}
exec "${FLOWER_SUPERNODE_BIN:-flower-supernode}" \
  --root-certificates "$ca" --superlink "$superlink" --auth-supernode-private-key "$key" \
  --node-config "$node_config" --host 127.0.0.1 --port "$runtime_port"
