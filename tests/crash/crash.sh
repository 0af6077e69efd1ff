#!/bin/bash
# SPDX-License-Identifier: MIT
# make check's share of the crash tests: a bounded sample of fault points
# per workload (always the first and the last) and a short kill -9 loop.
# `make crash` runs them all (tests/crash/run with RBLOCK_CRASH_ALL=1).
set -euo pipefail
: "${RBLOCK:?set RBLOCK to the rblock binary}"
RBLOCK_CRASH_ALL=0 exec bash "$(dirname "$0")/run"
