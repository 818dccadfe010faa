#!/usr/bin/env bash
# The load benchmark: 1,000 concurrent streams on loopback, then the same
# with hostile experts spinning and an embedding bomb, with the trivial
# expert's latency probed throughout. Prints the README's tables.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Client and server share the process: 1,000 connections need 2,000 files.
ulimit -n 8192
exec cargo bench --locked -p tessera-tests --bench hostile_load
