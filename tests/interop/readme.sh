#!/bin/bash
# README's examples run verbatim: the first session (the sh block between the
# readme-example markers), then every sh block of the Commands section, in
# order, in one scratch folder, with this build's rblock first on PATH.  Any
# failing line fails the test.
set -euo pipefail

: "${RBLOCK:?RBLOCK must name the rblock binary}"
src=${SRCDIR:-$(cd "$(dirname "$0")/../.." && pwd)}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

awk '/<!-- readme-example:/ {first = 1; next}
     /<!-- end readme-example -->/ {first = 0}
     /^## / {cmds = ($0 == "## Commands")}
     /^```/ {block = !block && ($0 == "```sh"); next}
     (first || (cmds && block))' "$src/README.md" > "$work/example.sh"
lines=$(grep -c . "$work/example.sh" || true)
if [ "$lines" -lt 5 ]; then
    echo "readme.sh: README.md has no readme-example block (found $lines lines)" >&2
    exit 1
fi
mkdir "$work/bin"
ln -s "$(readlink -f "$RBLOCK")" "$work/bin/rblock"
cd "$work"
PATH="$work/bin:$PATH" bash -euo pipefail -x example.sh
echo "readme.sh: README's examples ran ($lines lines)"
