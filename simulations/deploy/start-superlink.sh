#!/usr/bin/env bash
# Start a SuperLink with TLS and SuperNode authentication (runs in the foreground; Ctrl-C stops it).
# Usage: start-superlink.sh CERT_DIR STATE_DIR [HOST [PORT]]
#   CERT_DIR:  holds ca.crt, server.pem, server.key (make-certs.sh)
#   STATE_DIR: the SuperLink database (registered SuperNodes, runs) and log live here
#   HOST PORT: where the single HTTPS port (Fleet, Control and Runtime APIs) listens; default 0.0.0.0 8000
# Environment: FLWR_SUPEREXEC_TASK_POLL_INTERVAL (seconds, default here 0.1) - how often the
#   SuperLink's SuperExec looks for a ServerApp to start.
set -euo pipefail
[[ $# -ge 2 && $# -le 4 ]] || { echo "usage: $0 CERT_DIR STATE_DIR [HOST [PORT]]" >&2; exit 2; }
certs=$1 state=$2 host=${3:-0.0.0.0} port=${4:-8000}
for f in ca.crt server.pem server.key; do
  [[ -f $certs/$f ]] || { echo "error: $certs/$f missing; create it with make-certs.sh" >&2; exit 1; }
done
[[ $port =~ ^[0-9]+$ ]] || { echo "error: PORT '$port' is not a number" >&2; exit 2; }
mkdir -p "$state"
export FLWR_SUPEREXEC_TASK_POLL_INTERVAL=${FLWR_SUPEREXEC_TASK_POLL_INTERVAL:-0.1}
export FLWR_TELEMETRY_ENABLED=${FLWR_TELEMETRY_ENABLED:-0}
exec "${FLOWER_SUPERLINK_BIN:-flower-superlink}" \
  --ssl-ca-certfile "$certs/ca.crt" --ssl-certfile "$certs/server.pem" --ssl-keyfile "$certs/server.key" \
  --enable-supernode-auth --disable-runtime-dependency-installation \
  --database "$state/state.db" --host "$host" --port "$port"
