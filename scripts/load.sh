#!/usr/bin/env bash
# The load benchmark: 1,000 concurrent streams on loopback, then the same
# with hostile experts spinning and an embedding bomb, with the trivial
# expert's latency probed throughout. Prints the README's tables.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Client and server share the process: 1,000 connections need 2,000 files.
ulimit -n 8192
# The dev profile: the host and every dependency are built at opt-level 2
# there (see Cargo.toml), and it reuses the test command's build.
exec cargo bench --locked --profile dev -p tessera-tests --bench hostile_load
