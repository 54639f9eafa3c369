#!/usr/bin/env bash
# Checks that the C++ sources follow .clang-format (Google style, 100
# columns): every *.cc and *.h under core/ http/ tls/ policy/ bench/ tests/
# tools/ that git tracks (or would track: new files not yet added count too).
# Run by ctest (test "format").
#
#   tools/check_format.sh [ROOT]         lists the files clang-format would
#                                        change; exit 1 if there are any
#   tools/check_format.sh --fix [ROOT]   rewrites them in place
#
# Uses clang-format-14 (the Debian 12 package clang-format), or the
# clang-format on PATH; CLANG_FORMAT=/path/to/binary picks another. Other
# major versions may format a few constructs differently.
set -u

fix=0
if [[ "${1:-}" == "--fix" ]]; then
  fix=1
  shift
fi
root="${1:-$(dirname "$0")/..}"
cd "$root" || exit 2

cf="${CLANG_FORMAT:-}"
if [[ -z "$cf" ]]; then
  for candidate in clang-format-14 clang-format; do
    if command -v "$candidate" >/dev/null 2>&1; then
      cf="$candidate"
      break
    fi
  done
fi
if [[ -z "$cf" ]] || ! command -v "$cf" >/dev/null 2>&1; then
  echo "tools/check_format.sh: no clang-format found (install the Debian package" \
       "clang-format: tools/install-deps.sh --test, or set CLANG_FORMAT)" >&2
  exit 2
fi
if ! "$cf" --style=file --dump-config >/dev/null; then
  echo "tools/check_format.sh: $cf cannot read .clang-format" >&2
  exit 2
fi
version=$("$cf" --version | sed -nE 's/.*version ([0-9]+)\..*/\1/p')
if [[ "$version" != "14" ]]; then
  echo "tools/check_format.sh: note: $cf is version ${version:-unknown}," \
       "the style is checked with 14" >&2
fi

dirs=(core http tls policy bench tests tools)
files=()
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  pathspecs=()
  for d in "${dirs[@]}"; do pathspecs+=("$d/*.cc" "$d/*.h"); done
  while IFS= read -r -d '' f; do
    [[ -f "$f" ]] && files+=("$f")
  done < <(git ls-files -z --cached --others --exclude-standard -- "${pathspecs[@]}" |
           sort -zu)
else
  while IFS= read -r -d '' f; do
    files+=("$f")
  done < <(find "${dirs[@]}" -path '*/node_modules' -prune -o \
                -type f \( -name '*.cc' -o -name '*.h' \) -print0 2>/dev/null | sort -z)
fi
if ((${#files[@]} == 0)); then
  echo "tools/check_format.sh: no sources found under $(pwd)" >&2
  exit 2
fi

jobs=$(nproc 2>/dev/null || echo 2)
# clang-format reports each violation as
#   FILE:LINE:COL: error: code should be clang-formatted [-Wclang-format-violations]
# and a file it cannot read as "error: ..." at the start of a line. Each batch
# writes its own report file, so that parallel reports do not interleave.
tmp=$(mktemp -d) || exit 2
trap 'rm -rf "$tmp"' EXIT
# shellcheck disable=SC2016  # expanded by the sh that xargs starts
printf '%s\0' "${files[@]}" |
  FORMAT_REPORTS="$tmp" xargs -0 -n 32 -P "$jobs" sh -c \
    '"$0" --style=file --dry-run --Werror "$@" >"$(mktemp -p "$FORMAT_REPORTS")" 2>&1' "$cf"
rc=$?
report=$(cat "$tmp"/*)
mapfile -t bad < <(sed -nE 's/^(.+):[0-9]+:[0-9]+: error: .*\[-Wclang-format-violations\]$/\1/p' \
                   <<<"$report" | sort -u)
if ((rc != 0 && ${#bad[@]} == 0)) || grep -q '^error:' <<<"$report"; then
  grep '^error:' <<<"$report" >&2
  echo "tools/check_format.sh: $cf failed (exit status $rc)" >&2
  exit 2
fi

if ((${#bad[@]} == 0)); then
  echo "format: ${#files[@]} files follow .clang-format"
  exit 0
fi
if ((fix)); then
  printf '%s\0' "${bad[@]}" | xargs -0 -n 16 -P "$jobs" "$cf" --style=file -i || exit 1
  printf 'reformatted %s\n' "${bad[@]}"
  echo "format: ${#bad[@]} of ${#files[@]} files reformatted"
  exit 0
fi
printf '%s\n' "${bad[@]}"
echo "format: ${#bad[@]} of ${#files[@]} files differ from .clang-format;" \
     "run tools/check_format.sh --fix"
exit 1
