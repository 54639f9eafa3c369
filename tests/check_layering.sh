#!/usr/bin/env bash
# Which folder may include which (docs/DESIGN.md, "A request's way through").
# Each rule names a folder and the project headers it may include, as path
# prefixes; headers of the folder itself are always allowed. Only the
# io_uring backend (core/engine/uring_backend.cc) includes liburing: the
# rest of the engine goes through core/engine/backend.h. Run by ctest
# (test "layering").
set -u
root="${1:-.}"
cd "$root" || exit 2

declare -A allowed=(
  [policy]=""
  [http]="core/engine/slice.h"
  [tls]="core/engine/slice.h"
  [core/engine]="core/observe/log.h"
  [core/observe]="core/engine/slice.h policy/"
  [core/upstream]="core/engine/ core/observe/ core/server/config.h core/server/shard.h"
  [core/proxy]="core/engine/ core/observe/ core/upstream/ core/server/config.h core/server/shard.h http/ tls/ policy/"
  [core/server]="core/ http/ tls/ policy/"
)
# The proxy and the upstream pool get the per-core state as a Shard
# (core/server/shard.h), never the worker that owns the thread and loop.

status=0
for dir in "${!allowed[@]}"; do
  while IFS=: read -r file line text; do
    inc=$(sed -E 's/.*#include "([^"]+)".*/\1/' <<<"$text")
    [[ "$inc" == "$dir/"* ]] && continue
    ok=0
    for prefix in ${allowed[$dir]}; do
      [[ "$inc" == "$prefix"* ]] && { ok=1; break; }
    done
    if (( ! ok )); then
      echo "$file:$line: $dir/ may not include $inc"
      status=1
    fi
  done < <(grep -rnE '#include "(core|http|tls|policy)/' "$dir" --include='*.h' --include='*.cc' 2>/dev/null)
done

uring=$(grep -rlE '#include\s*[<"]liburing' core http tls policy \
        --include='*.h' --include='*.cc' 2>/dev/null | grep -v '^core/engine/uring_backend.cc$')
if [[ -n "$uring" ]]; then
  echo "liburing included outside core/engine/uring_backend.cc:"
  echo "$uring"
  status=1
fi
bad=$(grep -lE 'URING|sluice_core' http/CMakeLists.txt tls/CMakeLists.txt \
      policy/CMakeLists.txt 2>/dev/null)
if [[ -n "$bad" ]]; then
  echo "liburing or sluice_core linked by: $bad"
  status=1
fi
(( status == 0 )) && echo "layering ok"
exit $status
