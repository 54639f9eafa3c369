#!/usr/bin/env bash
# Quick start: install what is missing, build (Release) and run sluice with
# TLS (HTTP/2 and HTTP/1.1) on 127.0.0.1:8443 and a redirect to it on
# 127.0.0.1:8080, in front of Ollama at 127.0.0.1:11434. When nothing listens
# there, the bundled Ollama simulator is started in its place. The
# certificate comes from a local CA made by tools/make-certs.sh in certs/.
# Authentication is on, as in production: an API key named "quickstart" is
# made once (certs/keys.txt holds its hash, certs/quickstart.key the key).
# Extra arguments are passed to sluice (e.g. --threads=2).
set -euo pipefail
cd "$(dirname "$0")/.."

tools/install-deps.sh
cmake -S . -B build-release -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DSLUICE_BUILD_TESTS=OFF -DSLUICE_BUILD_BENCH=OFF >/dev/null
cmake --build build-release --target sluice ollama-sim
tools/make-certs.sh certs >/dev/null
if [[ ! -s certs/quickstart.key ]]; then
  rm -f certs/keys.txt
  (umask 077 && build-release/core/sluice keys add quickstart --keys_file certs/keys.txt \
    >certs/quickstart.key)
fi

sim_pid=""
cleanup() { [[ -n "$sim_pid" ]] && kill "$sim_pid" 2>/dev/null || true; }
trap cleanup EXIT

if (exec 3<>/dev/tcp/127.0.0.1/11434) 2>/dev/null; then
  echo "Ollama answers on 127.0.0.1:11434: proxying to it."
else
  echo "Nothing listens on 127.0.0.1:11434: starting the bundled Ollama simulator there."
  build-release/tools/ollama-sim/ollama-sim --listen=127.0.0.1:11434 >/dev/null &
  sim_pid=$!
  for _ in $(seq 50); do
    (exec 3<>/dev/tcp/127.0.0.1/11434) 2>/dev/null && break
    sleep 0.1
  done
fi

cat <<'MSG'

Stream a generation through sluice (in another terminal):
  curl -N --cacert certs/ca.pem -H "Authorization: Bearer $(cat certs/quickstart.key)" \
    https://127.0.0.1:8443/api/generate -d '{"model":"llama3.2","prompt":"Why is the sky blue?"}'
More keys: build-release/core/sluice keys add NAME --keys_file certs/keys.txt, then
kill -HUP the sluice process (or restart it).
Stop sluice with Ctrl-C (in-flight streams finish first).

MSG
echo "(run from $(pwd); certs/ca.pem is the local CA)"
build-release/core/sluice --listen_http=127.0.0.1:8080 --listen_tls=127.0.0.1:8443 \
  --tls_cert=certs/server.pem --tls_key=certs/server.key --keys_file=certs/keys.txt \
  --upstream=127.0.0.1:11434 "$@"
