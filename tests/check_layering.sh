#!/usr/bin/env bash
# Only core/ may include liburing; http/, tls/ and policy/ are pure codecs
# and policy code (see STYLE.md, Boundaries).
set -u
root="${1:-.}"
bad=$(grep -rlE '#include\s*[<"]liburing|io_uring' "$root/http" "$root/tls" "$root/policy" \
      --include='*.h' --include='*.cc' 2>/dev/null)
bad+=$(grep -lE 'URING|sluice_core' "$root/http/CMakeLists.txt" "$root/tls/CMakeLists.txt" \
       "$root/policy/CMakeLists.txt" 2>/dev/null)
if [[ -n "$bad" ]]; then
  echo "liburing used outside core/:"
  echo "$bad"
  exit 1
fi
echo "layering ok"
