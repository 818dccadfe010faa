#!/usr/bin/env bash
# Install what building and testing Tessera needs, idempotently:
# - a toolchain that builds wasm32 plugins: rustup's wasm32-unknown-unknown
#   target when it is installed; otherwise Debian's rustc-web +
#   rust-web-src (std built from source) with lld;
# - componentize-py (pinned), which `tessera build` uses for Python
#   plugins, in target/componentize-venv (where `tessera build` looks).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[setup] %s\n' "$*" >&2; }

componentize_py() {
    local version=0.25.1 venv=target/componentize-venv
    if [[ "$("$venv/bin/componentize-py" --version 2>/dev/null)" == *"$version"* ]]; then
        log "componentize-py $version present ($venv)"
        return
    fi
    log "installing componentize-py $version into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "componentize-py==$version"
}
componentize_py

sysroot=$(rustc --print sysroot 2>/dev/null || true)
if [[ -n "$sysroot" && -d "$sysroot/lib/rustlib/wasm32-unknown-unknown/lib" ]]; then
    log "rustup's wasm32-unknown-unknown target is installed"
    exit 0
fi

packages=(rustc-web cargo-web rust-web-src lld)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
    log "Debian wasm toolchain present (${packages[*]})"
    exit 0
fi

sudo=()
if [[ $(id -u) != 0 ]]; then
    command -v sudo >/dev/null || { log "need root (or sudo) to apt-get install ${missing[*]}"; exit 1; }
    sudo=(sudo)
fi
log "installing ${missing[*]} (no rustup wasm32 target here)"
"${sudo[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
log "done"
