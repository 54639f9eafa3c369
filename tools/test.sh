#!/usr/bin/env bash
# Installs what is missing, builds everything and runs the whole test suite
# (unit and integration tests, with the real sluice binary, the Ollama
# simulator, curl and the npm ollama/openai clients), then every fuzz target
# for a short while. This is what CI runs.
#
#   SANITIZE=address (default): everything built with ASan+UBSan in
#                    build-test-address; the sluice and ollama-sim that the
#                    integration tests start are the instrumented ones
#   SANITIZE=thread  TSan, in build-test-thread
#   SANITIZE=none    a plain build, in build-test
#   FUZZ_SECONDS=N   seconds per fuzz target (default 20; 0: no fuzzing).
#                    Fuzzing is skipped when ctest arguments select tests.
#
# Arguments go to ctest (-L unit, -R Retry).
set -euo pipefail
cd "$(dirname "$0")/.."

sanitize=${SANITIZE-address}
case "$sanitize" in
  address | thread) build="build-test-$sanitize" ;;
  none | "") sanitize=""; build="build-test" ;;
  *)
    echo "tools/test.sh: SANITIZE=${SANITIZE}: use address (ASan+UBSan, the default), thread (TSan) or none" >&2
    exit 2
    ;;
esac
fuzz_seconds=${FUZZ_SECONDS:-20}
if ! [[ "$fuzz_seconds" =~ ^[0-9]+$ ]]; then
  echo "tools/test.sh: FUZZ_SECONDS=${FUZZ_SECONDS}: not a number of seconds" >&2
  exit 2
fi

tools/install-deps.sh --test
if [[ -f tests/integration/node/package-lock.json ]]; then
  (cd tests/integration/node && npm ci --no-audit --no-fund --loglevel=error)
fi

cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DSLUICE_SANITIZE="$sanitize" >/dev/null
cmake --build "$build"
(cd "$build" && ctest --output-on-failure --timeout 300 -j2 "$@")

if (( fuzz_seconds > 0 && $# == 0 )); then
  tools/fuzz.sh "$fuzz_seconds"
fi
