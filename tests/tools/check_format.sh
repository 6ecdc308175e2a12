#!/usr/bin/env bash
# Check that C sources agree with .clang-format. With no argument every C file of the project
# is checked; with a git revision, only the C files changed since that revision (what CI
# looks at on a branch). Prints the files that differ and exits 1 if there are any.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
command -v clang-format >/dev/null || { echo "check_format: clang-format missing (make deps)" >&2; exit 1; }
if (($#)); then
  mapfile -t files < <(git diff --name-only --diff-filter=d "$1" -- '*.c' '*.h')
else
  mapfile -t files < <(git ls-files -- '*.c' '*.h')
fi
bad=0
for f in "${files[@]}"; do
  [[ -f $f ]] || continue
  if ! clang-format --dry-run -Werror "$f" >/dev/null 2>&1; then
    echo "not formatted: $f (clang-format -i $f)"
    bad=1
  fi
done
echo "check_format: ${#files[@]} files checked"
exit $bad
