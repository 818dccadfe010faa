#!/usr/bin/env bash
# The main job until `tessera serve` lands: build the host and the example
# experts, then run each one on a prompt with its trace. Installs the wasm
# toolchain first if needed.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
cargo build --release --locked --bin tessera
tessera=target/release/tessera

for expert in calculator chain-of-thought self-consistency; do
    "$tessera" build "plugins/$expert" >/dev/null
done

echo "== tessera inspect plugins/calculator"
"$tessera" inspect plugins/calculator
echo
echo "== tessera run plugins/calculator --prompt 'What is 12 * (3 + 4)?'"
"$tessera" run plugins/calculator --prompt "What is 12 * (3 + 4)?"
echo
echo "== the same, with its trace"
"$tessera" run plugins/calculator --prompt "What is 12 * (3 + 4)?" --trace
echo
echo "== tessera run plugins/chain-of-thought (needs the model, which is not built yet)"
"$tessera" run plugins/chain-of-thought --prompt "Why is the sky blue?" || true
