#!/usr/bin/env bash
# Tessera's CPU engine beside candle and llama.cpp on the same machine, the
# same GGUF (SmolLM2-135M Q4_1), the same work and the same build flags:
#
#   bash bench/llm/run.sh [ROUNDS]          # default 3 rounds, all cores
#   THREADS=2 PROMPT=128 DECODE=128 KV_CACHE=f16 BATCH=f32 bash bench/llm/run.sh
#
# - every side is built for the native CPU: Tessera and candle with
#   RUSTFLAGS="-C target-cpu=native" (one binary, its own target folder),
#   llama.cpp with -DGGML_NATIVE=ON (build-llama-cpp.sh);
# - the same thread count for all three (candle's rayon pool through
#   RAYON_NUM_THREADS; the binary refuses to run if it differs);
# - the same work as `llama-bench -p PROMPT -n DECODE` (prefill of a
#   PROMPT-token prompt, DECODE tokens decoded one at a time) and, for the
#   aggregate, `llama-batched-bench -npp 16 -ntg DECODE -npl 8,32`
#   (generated tokens over the whole time, prefill included);
# - the same KV cache type for Tessera and llama.cpp: f16, llama.cpp's
#   default (-ctk f16 -ctv f16; llama-bench takes no f32), Tessera's
#   --kv-cache f16 (KV_CACHE=f32 runs Tessera's default instead, beside
#   llama.cpp's f16); candle's quantized_llama keeps f32 keys and values,
#   it has no option;
# - Tessera's batches (prompts, several sequences) in f32, its default
#   (BATCH=bf16 runs them in bf16 on a CPU with AVX-512 BF16);
# - rounds alternate the engines (T C L, T C L, ...) so that drift in the
#   machine's speed hits all of them; each figure is the median over rounds;
# - peak RSS is each process's own (wait4's ru_maxrss), for llama-bench's
#   work and for the aggregates in separate processes on every side.
#
# Raw lines go to target/bench/llm-<time>.jsonl; the table is printed.
set -euo pipefail
cd "$(dirname "$0")/../.."

rounds=${1:-3}
threads=${THREADS:-$(nproc)}
prompt=${PROMPT:-128}
decode=${DECODE:-128}
kv=${KV_CACHE:-f16}
batch=${BATCH:-f32}

echo "[bench] building the bench binary (Tessera + candle) for the native CPU" >&2
CARGO_TARGET_DIR=target/bench-native RUSTFLAGS="-C target-cpu=native" \
    cargo build --release --manifest-path bench/llm/Cargo.toml >&2
bench=target/bench-native/release/tessera-bench-llm
llama=$(bash bench/llm/build-llama-cpp.sh)

# The bench binary fetches the model when it is missing (as `tessera
# models pull` does) and says where it is; llama.cpp reads the same file.
gguf=$("$bench" --locate)
mkdir -p target/bench
out=target/bench/llm-$(date -u +%Y%m%dT%H%M%SZ).jsonl
echo "[bench] $rounds rounds, $threads threads, prompt $prompt, decode $decode, $kv KV cache, $batch batches -> $out" >&2

python3 - "$bench" "$llama" "$gguf" "$rounds" "$threads" "$prompt" "$decode" "$out" "$kv" "$batch" <<'EOF'
import json, os, statistics, subprocess, sys

bench, llama, gguf, rounds, threads, prompt, decode, out, kv, batch = sys.argv[1:]
rounds, threads, prompt, decode = int(rounds), int(threads), int(prompt), int(decode)


def run(cmd, env=None):
    """Run cmd to its end; return (stdout, peak RSS in MiB from wait4)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, **(env or {})}, text=True)
    stdout, stderr = proc.stdout.read(), proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"{cmd[0]} failed ({proc.returncode}):\n{stderr[-3000:]}")
    return stdout, usage.ru_maxrss / 1024


def ours(engine):
    cmd = [bench, "--engine", engine, "--threads", str(threads), "--prompt-tokens",
           str(prompt), "--decode-tokens", str(decode), "--repeat", "1", "--gguf", gguf]
    if engine == "tessera":
        cmd += ["--kv-cache", kv, "--batch-precision", batch]
    env = {"RAYON_NUM_THREADS": str(threads)}
    # llama-bench's work and llama-batched-bench's in processes of their
    # own, as llama.cpp's two binaries: each peak RSS is that work's.
    stdout, rss = run(cmd + ["--no-aggregate"], env)
    line = json.loads(stdout.strip().splitlines()[-1])
    line["peak_rss_mib"] = rss
    if engine == "tessera":
        stdout, rss = run(cmd + ["--aggregate-only"], env)
        line["aggregate"] = json.loads(stdout.strip().splitlines()[-1])["aggregate"]
        line["peak_rss_aggregate_mib"] = rss
    return line


def llama_cpp():
    stdout, rss = run([f"{llama}/llama-bench", "-m", gguf, "-p", str(prompt), "-n", str(decode),
                       "-t", str(threads), "-r", "1", "-ctk", "f16", "-ctv", "f16", "-o", "json"])
    rows = json.loads(stdout)
    figures = {"engine": "llama.cpp", "aggregate": {}, "peak_rss_mib": rss}
    for row in rows:
        key = "prefill" if row["n_prompt"] > 0 else "decode"
        figures[key] = row["avg_ts"]
    ctx = 32 * (16 + decode)
    stdout, figures["peak_rss_aggregate_mib"] = run([f"{llama}/llama-batched-bench", "-m", gguf, "-c", str(ctx), "-b", "2048",
                     "-ub", "512", "-npp", "16", "-ntg", str(decode), "-npl", "8,32",
                     "-t", str(threads), "-ctk", "f16", "-ctv", "f16", "--output-format", "jsonl"])
    for line in stdout.splitlines():
        if line.startswith("{"):
            row = json.loads(line)
            figures["aggregate"][str(row["pl"])] = row["pl"] * row["tg"] / row["t"]
    return figures


results = []
with open(out, "w") as f:
    for r in range(rounds):
        for name, fn in [("tessera", lambda: ours("tessera")), ("candle", lambda: ours("candle")),
                         ("llama.cpp", llama_cpp)]:
            line = fn()
            line["round"] = r
            print(f"[bench] round {r + 1}/{rounds} {name}: {json.dumps(line)}", file=sys.stderr)
            f.write(json.dumps(line) + "\n")
            f.flush()
            results.append(line)


def med(engine, key, sub=None):
    xs = [(l.get(key) if sub is None else l.get(key, {}).get(sub))
          for l in results if l["engine"] == engine]
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def cell(x, unit=""):
    return "—" if x is None else f"{x:,.0f}{unit}"


names = ["tessera", "candle", "llama.cpp"]
rows = [("decode, batch 1 (tok/s)", "decode", None), ("prefill (tok/s)", "prefill", None),
        ("aggregate, 8 sequences (tok/s)", "aggregate", "8"),
        ("aggregate, 32 sequences (tok/s)", "aggregate", "32"),
        ("peak RSS, prefill + decode (MiB)", "peak_rss_mib", None),
        ("peak RSS, the aggregates (MiB)", "peak_rss_aggregate_mib", None)]
print(f"{rounds} rounds, {threads} threads, prompt {prompt}, decode {decode}, KV cache: "
      f"Tessera {kv}, candle f32, llama.cpp f16; medians")
print("| figure | Tessera | candle | llama.cpp | Tessera ÷ llama.cpp |")
print("|---|---|---|---|---|")
for label, key, sub in rows:
    t, c, l = (med(n, key, sub) for n in names)
    ratio = f"{t / l:.2f}×" if t and l else "—"
    print(f"| {label} | {cell(t)} | {cell(c)} | {cell(l)} | {ratio} |")
EOF
