#!/usr/bin/env bash
# The engine tests with burn's wgpu backend compiled in, including the
# CPU-versus-wgpu logits test. Without a GPU, wgpu runs on Mesa's lavapipe
# (installed here if missing). Not part of scripts/test.sh: the wgpu build
# takes longer than the CI budget allows.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! ls /usr/share/vulkan/icd.d/*.json >/dev/null 2>&1 && command -v apt-get >/dev/null; then
    echo "installing Mesa's Vulkan drivers (lavapipe) ..."
    apt-get update -qq && apt-get install -y -qq mesa-vulkan-drivers >/dev/null
fi
cargo test --release --locked -p tessera-host --features wgpu --test engine -- --test-threads 1 "$@"
