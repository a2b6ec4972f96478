#!/usr/bin/env bash
# Create a SuperNode's authentication key pair (ECDSA P-384, OpenSSH format, as Flower expects).
# Usage: make-supernode-key.sh KEYFILE
#   Writes KEYFILE (private: stays on the SuperNode's host) and KEYFILE.pub (register it with
#   register-supernode.sh). An existing key is kept, never overwritten.
set -euo pipefail
[[ $# -eq 1 ]] || { echo "usage: $0 KEYFILE" >&2; exit 2; }
key=$1
command -v ssh-keygen >/dev/null || { echo "error: ssh-keygen not found (install openssh-client)" >&2; exit 1; }
if [[ -e $key ]]; then
  [[ -e $key.pub ]] || { echo "error: $key exists but $key.pub does not" >&2; exit 1; }
  echo "kept existing key $key"; exit 0
fi
mkdir -p "$(dirname "$key")"
ssh-keygen -q -t ecdsa -b 384 -N "" -C "fedguard-supernode" -f "$key"
echo "private key: $key"
echo "public key:  $key.pub"
