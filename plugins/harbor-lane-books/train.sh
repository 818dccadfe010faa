#!/usr/bin/env bash
# Train the Harbor Lane Books adapter: a LoRA (rank 8 on q_proj and v_proj)
# of SmolLM2-135M-Instruct on data/train.jsonl, written to adapter/ as
# PEFT files. About a minute on two CPU cores; the same seed gives the
# same weights. $OUT writes elsewhere; extra arguments go to `tessera
# adapt` ($TESSERA_MODELS_DIR or --models-dir says where the model is).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
tessera="${TESSERA:-$here/../../target/release/tessera}"
exec "$tessera" adapt --data "$here/data/train.jsonl" --out "${OUT:-$here/adapter}" \
    --rank 8 --alpha 16 --targets q,v --epochs 3 --lr 2e-3 --seed 0 --force "$@"
