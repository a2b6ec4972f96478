#!/usr/bin/env bash
# Register SuperNode public keys with a SuperLink that runs with --enable-supernode-auth.
# Usage: register-supernode.sh CONNECTION PUBKEY [PUBKEY...]
#   CONNECTION: a name from $FLWR_HOME/config.toml (see add-connection.sh).
set -euo pipefail
[[ $# -ge 2 ]] || { echo "usage: $0 CONNECTION PUBKEY [PUBKEY...]" >&2; exit 2; }
conn=$1; shift
flwr=${FLWR_BIN:-flwr}
command -v "$flwr" >/dev/null || { echo "error: '$flwr' not found; activate the FedGuard environment" >&2; exit 1; }
for pub in "$@"; do
  [[ -f $pub ]] || { echo "error: public key '$pub' not found" >&2; exit 1; }
  if ! out=$("$flwr" supernode register "$pub" "$conn" 2>&1); then
    echo "error: registering $pub with '$conn' failed:" >&2; echo "$out" >&2; exit 1
  fi
  echo "registered $pub"
done
