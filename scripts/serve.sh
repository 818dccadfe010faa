#!/usr/bin/env bash
# The main job: `tessera serve` on the default models and the example
# experts, on http://127.0.0.1:8080/v1 (OpenAI-compatible). On a fresh
# machine it installs the wasm toolchain, builds the host, fetches the
# models (~180 MB, once) and builds the example experts first.
# Extra arguments go to `tessera serve` (see `tessera serve --help`).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
cargo build --release --locked --bin tessera
exec target/release/tessera serve "$@"
