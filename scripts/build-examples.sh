#!/usr/bin/env bash
# Build what `tessera serve` serves by default: the host (release), the
# models (~180 MB, fetched once), the example fine-tune's weights (trained
# once) and every example expert. Idempotent; cargo makes it quick when
# nothing changed. Used by serve.sh and eval.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
cargo build --release --locked --bin tessera
# The example fine-tune's weights are trained, not checked in: train them
# once (about a minute, with progress) before its bundle is built.
if [[ ! -f plugins/harbor-lane-books/adapter/adapter_model.safetensors ]]; then
    target/release/tessera models pull >/dev/null
    TESSERA=target/release/tessera bash plugins/harbor-lane-books/train.sh
fi
# `tessera serve` never builds plugin sources itself (a crate's build
# scripts would run natively): build our own example experts here.
# Rust crates build with cargo, Python plugins (app.py) with componentize-py.
for dir in plugins/*/; do
    if [[ -f "$dir/tessera.toml" && ( -f "$dir/Cargo.toml" || -f "$dir/app.py" ) ]]; then
        target/release/tessera build "$dir"
    fi
done
