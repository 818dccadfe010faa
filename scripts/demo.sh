#!/usr/bin/env bash
# A tour of the command line (the main job is scripts/serve.sh): build the host and the example
# experts, fetch the models, then run the engine alone and each expert on a
# prompt (one with its trace). Installs the wasm toolchain first if needed.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
cargo build --release --locked --bin tessera
tessera=target/release/tessera

"$tessera" models pull
for expert in assistant calculator chain-of-thought self-consistency; do
    "$tessera" build "plugins/$expert" >/dev/null
done

echo "== tessera generate: the engine alone (SmolLM2-135M on burn, CPU)"
"$tessera" generate --prompt "What is the capital of France?"
echo
echo "== tessera embed: MiniLM sentence embeddings"
"$tessera" embed "A man is eating food." "A man is eating a piece of bread." "The stock market fell."
echo
echo "== tessera inspect plugins/calculator"
"$tessera" inspect plugins/calculator
echo
echo "== tessera run plugins/calculator --prompt 'What is 12 * (3 + 4)?'"
"$tessera" run plugins/calculator --prompt "What is 12 * (3 + 4)?"
echo
echo "== the same, with its trace"
"$tessera" run plugins/calculator --prompt "What is 12 * (3 + 4)?" --trace
echo
echo "== tessera run plugins/chain-of-thought"
"$tessera" run plugins/chain-of-thought --prompt "Why is the sky blue? Answer in two sentences."
echo
echo "== tessera run plugins/self-consistency"
"$tessera" run plugins/self-consistency --prompt "What is the capital of Italy?"
