#!/usr/bin/env bash
# The ensemble's figures in the README: the base model and every strategy
# of `tessera/auto` on the held-out test set and on the development set,
# through `tessera eval` on a server of its own (the example experts, the
# cascade calibration fitted on the development set). Takes ~20 minutes on
# 2 cores. Answers go to target/eval/{test,dev}-details.jsonl.
# Extra arguments go to both `tessera eval` runs (e.g. --limit 10).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/build-examples.sh
mkdir -p target/eval
models=SmolLM2-135M-Instruct,tessera/auto,tessera/auto:moa,tessera/auto:cascade
for set in test dev; do
    echo "== $set set"
    target/release/tessera eval "tests/data/eval/$set.jsonl" --models "$models" \
        --details "target/eval/$set-details.jsonl" "$@" \
        -- --no-audit --cascade-calibration plugins/cascade-calibration.json
done
