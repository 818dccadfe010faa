#!/usr/bin/env bash
# The main job: `tessera serve` on the default models and the example
# experts, on http://127.0.0.1:8080/v1 (OpenAI-compatible). On a fresh
# machine it installs the wasm toolchain, builds the host, fetches the
# models (~180 MB, once) and builds the example experts first (cargo makes
# that quick when they are unchanged).
# Extra arguments go to `tessera serve` (see `tessera serve --help`).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/build-examples.sh
# The cascade's calibration for these experts, fitted on the development
# set (`tessera eval --calibrate`), unless the arguments or a config file
# say otherwise.
defaults=(--cascade-calibration plugins/cascade-calibration.json)
for arg in "$@"; do
    case "$arg" in
    --cascade-calibration* | --config* | -c) defaults=() ;;
    esac
done
exec target/release/tessera serve "${defaults[@]}" "$@"
