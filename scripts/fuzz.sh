#!/usr/bin/env bash
# Fuzz everything Tessera reads from strangers, for a bounded time:
#   bash scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
# (default 600 s each; targets: manifest gguf safetensors openai component).
# Uses cargo-fuzz (libFuzzer) through the stable compiler with
# RUSTC_BOOTSTRAP=1, without a sanitizer (the code is safe Rust: what we
# look for is panics, overflows, hangs and runaway memory), with debug
# assertions on. Two targets run at a time. Crashes land in
# fuzz/artifacts/TARGET/; each one found becomes a regression test.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-600}
shift || true
targets=("$@")
if ((${#targets[@]} == 0)); then
    targets=(manifest gguf safetensors openai component)
fi

if ! command -v cargo-fuzz >/dev/null; then
    echo "[fuzz] installing cargo-fuzz" >&2
    cargo install --locked cargo-fuzz@0.13.2
fi
flags=(--sanitizer none --debug-assertions --release)
# Only for the fuzz builds: set for the main workspace too, it would change
# build scripts' view of the compiler and rebuild everything there.
fuzz() { RUSTC_BOOTSTRAP=1 cargo fuzz "$@"; }

bash scripts/setup.sh
# Seeds: real inputs of each kind.
seeds=fuzz/corpus
mkdir -p "$seeds"/{manifest,gguf,safetensors,openai,component}
i=0
for m in plugins/*/tessera.toml tests/plugins/*/tessera.toml; do
    cp "$m" "$seeds/manifest/seed-$i.toml"; i=$((i + 1))
done
python3 - "$seeds" <<'PY'
import json, struct, sys
seeds = sys.argv[1]
# A small GGUF v3 header: two metadata keys and one F32 tensor.
def s(x): b = x.encode(); return struct.pack("<Q", len(b)) + b
kv = s("general.architecture") + struct.pack("<I", 8) + s("llama")
kv += s("llama.block_count") + struct.pack("<I", 4) + struct.pack("<I", 2)
kv += s("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, 2) + s("a") + s("b")
tensor = s("token_embd.weight") + struct.pack("<I", 2) + struct.pack("<QQ", 4, 2) + struct.pack("<I", 0) + struct.pack("<Q", 0)
head = b"GGUF" + struct.pack("<IQQ", 3, 1, 3) + kv + tensor
head += b"\0" * ((-len(head)) % 32) + b"\0" * 32
open(f"{seeds}/gguf/small.gguf", "wb").write(head)
# A small safetensors file.
header = json.dumps({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
                     "__metadata__": {"format": "pt"}}).encode()
open(f"{seeds}/safetensors/small.safetensors", "wb").write(struct.pack("<Q", len(header)) + header + b"\0" * 16)
bodies = [
    {"model": "calculator", "messages": [{"role": "user", "content": "2+2"}]},
    {"model": "tessera/auto", "stream": True, "n": 1, "temperature": 0.5, "top_p": 0.9,
     "stop": ["\n"], "max_tokens": 16, "metadata": {"a": "b"},
     "messages": [{"role": "system", "content": "x"},
                  {"role": "user", "content": [{"type": "text", "text": "hi"}]}]},
    {"model": "SmolLM2-135M-Instruct", "prompt": ["a", "b"], "n": 2, "logprobs": 1, "echo": False},
    {"model": "all-MiniLM-L6-v2", "input": ["a", "b"], "encoding_format": "base64"},
    {"model": "m", "messages": [], "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "object"}}}},
]
for i, b in enumerate(bodies):
    open(f"{seeds}/openai/body-{i}.json", "w").write(json.dumps(b))
PY
cargo build --locked --bin tessera
for crate in tests/plugins/echo plugins/calculator; do
    bundle=$(target/debug/tessera build "$crate" 2>/dev/null)
    cp "$bundle"/*.wasm "$seeds/component/"
done

cd fuzz
echo "[fuzz] building the targets (first build: several minutes)" >&2
fuzz build "${flags[@]}"

run() {
    local target=$1 max_len=4096
    [[ $target == component ]] && max_len=262144
    [[ $target == gguf ]] && max_len=65536
    mkdir -p "corpus/$target" "artifacts/$target"
    fuzz run "${flags[@]}" "$target" "corpus/$target" -- \
        -max_total_time="$seconds" -max_len="$max_len" -timeout=10 -rss_limit_mb=4096 \
        -print_final_stats=1 -close_fd_mask=1 >"artifacts/$target.log" 2>&1 || true
    local runs crashes
    runs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "artifacts/$target.log" | grep -oE '[0-9]+$' || echo "?")
    crashes=$(find "artifacts/$target" -type f \( -name 'crash-*' -o -name 'oom-*' -o -name 'timeout-*' \) | wc -l)
    printf '%-12s %8ss %12s runs %4s crashes\n' "$target" "$seconds" "$runs" "$crashes"
}

echo "target       time            runs   crashes"
running=0
for t in "${targets[@]}"; do
    run "$t" &
    running=$((running + 1))
    if ((running == 2)); then
        wait -n
        running=$((running - 1))
    fi
done
wait
