#!/usr/bin/env bash
# Installs what is missing, builds everything and runs the whole test suite
# (unit and integration tests, with the real sluice binary, the Ollama
# simulator, curl and the npm ollama/openai clients).
# SANITIZE=address (ASan+UBSan) or SANITIZE=thread (TSan) builds everything
# with that sanitizer in its own directory (build-test-address,
# build-test-thread); the sluice and ollama-sim that the integration tests
# start are the instrumented ones. Arguments go to ctest (-L unit, -R Retry).
set -euo pipefail
cd "$(dirname "$0")/.."

case "${SANITIZE:-}" in
  "" | address | thread) ;;
  *)
    echo "tools/test.sh: SANITIZE=${SANITIZE}: use address (ASan+UBSan) or thread (TSan)" >&2
    exit 2
    ;;
esac

tools/install-deps.sh --test
if [[ -f tests/integration/node/package-lock.json ]]; then
  (cd tests/integration/node && npm ci --no-audit --no-fund --loglevel=error)
fi

build="build-test${SANITIZE:+-$SANITIZE}"
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DSLUICE_SANITIZE="${SANITIZE:-}" >/dev/null
cmake --build "$build"
cd "$build"
ctest --output-on-failure --timeout 300 -j2 "$@"
