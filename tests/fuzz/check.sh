#!/bin/bash
# Fuzz targets, short pass (make check): replay every regression input in
# tests/fuzz/regress/, then each target over its seed corpus plus a fixed
# number of mutated inputs (FUZZ_RUNS, default 5000).  `make fuzz` runs
# them long (tests/fuzz/run long).  Fails when clang is missing
# (scripts/install-deps installs it).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
command -v clang >/dev/null || command -v clang-14 >/dev/null || { echo "fuzz: clang is missing (scripts/install-deps installs it)" >&2; exit 1; }
export FUZZ_BUILD=${FUZZ_BUILD:-${BUILDDIR:-$here/../../build-check}/fuzz}
export FUZZ_RUNS=${FUZZ_RUNS:-5000}
exec "$here/run" check
