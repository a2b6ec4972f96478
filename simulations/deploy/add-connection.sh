#!/usr/bin/env bash
# Add a SuperLink connection to the Flower configuration ($FLWR_HOME/config.toml, default ~/.flwr),
# so that `flwr run . NAME` and `flwr supernode register KEY NAME` reach that SuperLink over TLS.
# Usage: add-connection.sh NAME HOST:PORT CA_CERT
set -euo pipefail
[[ $# -eq 3 ]] || { echo "usage: $0 NAME HOST:PORT CA_CERT" >&2; exit 2; }
name=$1 address=$2 ca=$3
[[ $name =~ ^[A-Za-z0-9_-]+$ ]] || { echo "error: connection name '$name' may only hold letters, digits, - and _" >&2; exit 2; }
[[ $address == *:* ]] || { echo "error: address '$address' must be HOST:PORT" >&2; exit 2; }
[[ -f $ca ]] || { echo "error: CA certificate '$ca' not found" >&2; exit 1; }
ca=$(cd "$(dirname "$ca")" && pwd)/$(basename "$ca")
home=${FLWR_HOME:-$HOME/.flwr}
config=$home/config.toml
mkdir -p "$home"
if [[ ! -f $config ]]; then
  printf '[superlink]\ndefault = "%s"\n' "$name" >"$config"
elif grep -q "^\[superlink\.$name\]" "$config"; then
  echo "error: connection '$name' already exists in $config; edit or remove it first" >&2; exit 1
fi
printf '\n[superlink.%s]\naddress = "%s"\nroot-certificates = "%s"\n' "$name" "$address" "$ca" >>"$config"
echo "connection '$name' -> $address (CA $ca) added to $config"
