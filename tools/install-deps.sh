#!/usr/bin/env bash
# Installs the Debian packages sluice builds and tests with, skipping the
# ones already present (so a prepared machine needs no network at all).
# Usage: tools/install-deps.sh [--test]
set -euo pipefail

pkgs=(g++ cmake ninja-build pkg-config curl openssl
      libcrypt-dev liburing-dev libnghttp2-dev node-llhttp android-libboringssl-dev libabsl-dev
      libsimdjson-dev)
if [[ "${1:-}" == "--test" ]]; then
  pkgs+=(libgtest-dev libgmock-dev libbenchmark-dev nghttp2-client wrk nginx haproxy apache2-utils python3
          clang libclang-rt-14-dev clang-format)
fi

missing=()
for p in "${pkgs[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed"; then
    missing+=("$p")
  fi
done
if [[ "${1:-}" == "--test" ]] && ! command -v node >/dev/null 2>&1; then
  missing+=(nodejs npm)
fi

if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  if [[ $(id -u) -ne 0 ]]; then
    echo "tools/install-deps.sh: run as root (apt-get install ${missing[*]})" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
