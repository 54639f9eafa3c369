#!/usr/bin/env bash
# make-certs.sh [--rsa] [--force] DIR
#
# Creates a local certificate authority and a server certificate signed by it
# for trying sluice on this machine:
#   DIR/ca.pem       the CA certificate: what clients trust
#                    (curl --cacert DIR/ca.pem https://localhost:8443/)
#   DIR/ca.key       the CA's private key (mode 0600)
#   DIR/server.pem   the server chain: leaf certificate, then the CA
#                    (sluice's certificate chain file)
#   DIR/server.key   the server's private key (mode 0600)
# The leaf is valid for localhost, 127.0.0.1 and ::1 for 825 days, the CA for
# ten years. Keys are ECDSA P-256, or RSA 2048 with --rsa.
#
# Idempotent: existing files are kept (an existing CA signs a missing server
# certificate) unless --force, which makes everything anew. Needs the openssl
# command (Debian package openssl).
set -euo pipefail

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
}

rsa=0
force=0
dir=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --rsa) rsa=1 ;;
    --force) force=1 ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "make-certs.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    *)
      if [[ -n "$dir" ]]; then
        echo "make-certs.sh: one directory only" >&2
        exit 2
      fi
      dir="$1"
      ;;
  esac
  shift
done
if [[ -z "$dir" ]]; then
  usage >&2
  exit 2
fi
if ! command -v openssl >/dev/null 2>&1; then
  echo "make-certs.sh: the openssl command is needed (apt-get install openssl)" >&2
  exit 1
fi

mkdir -p "$dir"
ca_pem="$dir/ca.pem"
ca_key="$dir/ca.key"
server_pem="$dir/server.pem"
server_key="$dir/server.key"

if [[ $force -eq 1 ]]; then
  rm -f "$ca_pem" "$ca_key" "$server_pem" "$server_key"
fi

# A pair with one half missing is a mistake to report, not to paper over.
check_pair() {
  if [[ -e "$1" && ! -e "$2" ]] || [[ ! -e "$1" && -e "$2" ]]; then
    echo "make-certs.sh: only one of $1 and $2 exists; remove it or use --force" >&2
    exit 1
  fi
}
check_pair "$ca_pem" "$ca_key"
check_pair "$server_pem" "$server_key"

work="$(mktemp -d "$dir/.make-certs.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# Our own config, so the result does not depend on /etc/ssl/openssl.cnf.
cat >"$work/openssl.cnf" <<'EOF'
[req]
distinguished_name = dn
[dn]
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[v3_server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost,IP:127.0.0.1,IP:::1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF

new_key() {
  if [[ $rsa -eq 1 ]]; then
    (umask 077 && openssl genpkey -quiet -algorithm RSA \
      -pkeyopt rsa_keygen_bits:2048 -out "$1")
  else
    (umask 077 && openssl genpkey -quiet -algorithm EC \
      -pkeyopt ec_paramgen_curve:P-256 -out "$1")
  fi
  chmod 600 "$1"
}

made=()
if [[ ! -e "$ca_pem" ]]; then
  new_key "$work/ca.key"
  openssl req -new -x509 -config "$work/openssl.cnf" -extensions v3_ca \
    -key "$work/ca.key" -sha256 -days 3650 -subj "/CN=sluice local CA" \
    -out "$work/ca.pem"
  chmod 644 "$work/ca.pem"
  mv "$work/ca.key" "$ca_key"
  mv "$work/ca.pem" "$ca_pem"
  made+=(ca.pem ca.key)
fi

if [[ ! -e "$server_pem" ]]; then
  new_key "$work/server.key"
  openssl req -new -config "$work/openssl.cnf" -key "$work/server.key" \
    -subj "/CN=localhost" -out "$work/server.csr"
  openssl x509 -req -in "$work/server.csr" -CA "$ca_pem" -CAkey "$ca_key" \
    -set_serial "0x$(openssl rand -hex 15)" -days 825 -sha256 \
    -extfile "$work/openssl.cnf" -extensions v3_server \
    -out "$work/leaf.pem" 2>/dev/null
  cat "$work/leaf.pem" "$ca_pem" >"$work/server.pem"
  chmod 644 "$work/server.pem"
  mv "$work/server.key" "$server_key"
  mv "$work/server.pem" "$server_pem"
  made+=(server.pem server.key)
fi

if [[ ${#made[@]} -eq 0 ]]; then
  echo "Kept the existing certificates in $dir (use --force to make new ones):"
else
  echo "Made ${made[*]} in $dir:"
fi
echo "  CA certificate: $ca_pem   (clients: curl --cacert $ca_pem)"
echo "  CA key:         $ca_key"
echo "  server chain:   $server_pem   (leaf for localhost, 127.0.0.1, ::1; then the CA)"
echo "  server key:     $server_key"
