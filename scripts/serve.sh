#!/usr/bin/env bash
# The main job: `tessera serve` on the default models and the example
# experts, on http://127.0.0.1:8080/v1 (OpenAI-compatible). On a fresh
# machine it installs the wasm toolchain, builds the host, fetches the
# models (~180 MB, once) and builds the example experts first (cargo makes
# that quick when they are unchanged).
# Extra arguments go to `tessera serve` (see `tessera serve --help`).
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
for dir in plugins/*/; do
    if [[ -f "$dir/tessera.toml" && -f "$dir/Cargo.toml" ]]; then
        target/release/tessera build "$dir"
    fi
done
# The Python example expert is built by componentize-py, not cargo.
bash plugins/py-runner/build.sh >/dev/null
exec target/release/tessera serve "$@"
