#!/usr/bin/env bash
# Create a private CA and a SuperLink server certificate signed by it (openssl).
# Usage: make-certs.sh OUTDIR HOST [HOST...]
#   HOST: every DNS name or IP address SuperNodes and `flwr` will use to reach the SuperLink
#         (127.0.0.1 and localhost are always added: the SuperLink's own SuperExec uses them).
# Writes OUTDIR/ca.crt (give to every SuperNode and to `flwr`), OUTDIR/ca.key (keep offline),
# OUTDIR/server.pem + OUTDIR/server.key (SuperLink only). Existing files are never overwritten.
set -euo pipefail
usage() { echo "usage: $0 OUTDIR HOST [HOST...]   (HOST = DNS name or IP of the SuperLink)" >&2; exit 2; }
[[ $# -ge 2 ]] || usage
out=$1; shift
command -v openssl >/dev/null || { echo "error: openssl not found on PATH" >&2; exit 1; }
mkdir -p "$out"
for f in ca.key ca.crt server.key server.pem; do
  [[ ! -e "$out/$f" ]] || { echo "error: $out/$f already exists; remove it or choose another OUTDIR" >&2; exit 1; }
done
san=""
for host in "$@"; do
  if [[ $host =~ ^[0-9.]+$ || $host == *:* ]]; then san+="IP:$host,"; else san+="DNS:$host,"; fi
done
# The SuperLink's own SuperExec reaches the Runtime API on 127.0.0.1 when it binds 0.0.0.0: always include it.
[[ ,$san, == *,IP:127.0.0.1,* ]] || san+="IP:127.0.0.1,"
[[ ,$san, == *,DNS:localhost,* ]] || san+="DNS:localhost,"
san=${san%,}
days=${CERT_DAYS:-365}
umask 077
openssl ecparam -name prime256v1 -genkey -noout -out "$out/ca.key"
openssl req -x509 -new -key "$out/ca.key" -sha256 -days "$days" -subj "/CN=FedGuard deployment CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -out "$out/ca.crt" 2>/dev/null
openssl ecparam -name prime256v1 -genkey -noout -out "$out/server.key"
ext=$(mktemp); trap 'rm -f "$ext" "$out/server.csr" "$out/ca.srl"' EXIT
printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' "$san" >"$ext"
openssl req -new -key "$out/server.key" -subj "/CN=$1" -out "$out/server.csr" 2>/dev/null
openssl x509 -req -in "$out/server.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" -CAcreateserial \
  -days "$days" -sha256 -extfile "$ext" -out "$out/server.pem" 2>/dev/null
chmod 644 "$out/ca.crt" "$out/server.pem"
openssl verify -CAfile "$out/ca.crt" "$out/server.pem" >/dev/null
echo "CA:          $out/ca.crt"
echo "certificate: $out/server.pem ($san)"
echo "key:         $out/server.key"
