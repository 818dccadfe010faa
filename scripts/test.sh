#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs the wasm toolchain if
# needed, checks formatting and lints, then runs every test. The tests
# build the plugins they need from source.
set -euo pipefail
cd "$(dirname "$0")/.."

# A fresh clone gains nothing from incremental compilation, and its caches
# (~3 GB for this workspace) are what filled a CI disk once.
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}

bash scripts/setup.sh

echo "== OpenSSH's ssh-keygen (the signing tests check our signatures with it)"
if ! command -v ssh-keygen >/dev/null; then
    sudo=()
    [[ $(id -u) != 0 ]] && sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends openssh-client >/dev/null
fi

echo "== cargo fmt"
cargo fmt --all --check
(cd plugins && cargo fmt --all --check)
(cd tests/plugins && cargo fmt --all --check)

echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== the official openai Python client, for the serve tests"
venv=target/openai-venv
if ! "$venv/bin/python" -c "import openai" 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet openai==3.54.0
fi
export TESSERA_OPENAI_PYTHON="$PWD/$venv/bin/python"

echo "== host, SDK and end-to-end tests"
cargo test --workspace --locked

echo "== cargo install, as the README and the plugin guide say"
# The documented `cargo install --path host --locked`, in the dev profile
# and the workspace's target folder so that it reuses the test build
# (release would compile the whole host again, ~10 min on 2 cores).
root=target/install-test
rm -rf "$root"
cargo install --quiet --path host --locked --debug --root "$root" --target-dir target
scratch=$(mktemp -d)
PATH="$PWD/$root/bin:$PATH" bash -c 'cd "$1" && tessera --version && tessera new installed-check && test -f installed-check/tessera.toml' _ "$scratch"
rm -rf "$scratch"

echo "== example experts' unit tests (native)"
(cd plugins && cargo test --locked)
for dir in plugins/*/; do
    if [[ -f "$dir/app.py" ]]; then
        PYTHONPATH=sdk/python python3 -m unittest discover -s "$dir" -p 'test_*.py'
    fi
done
PYTHONPATH=sdk/python python3 -m unittest discover -s sdk/python -p 'test_*.py'

echo "== evaluation sets: no prompt is a near-copy of a manifest example"
python3 tests/data/eval/near_copies.py tests/data/eval/test.jsonl tests/data/eval/dev.jsonl
