#!/usr/bin/env bash
# Build llama.cpp's `llama-bench` and `llama-batched-bench`, the reference
# for Tessera's CPU engine, from the sources vendored in PyPI's
# llama-cpp-python 0.3.36 source distribution (pinned by sha256; PyPI is
# reachable where GitHub is not). Built for the native CPU
# (-DGGML_NATIVE=ON), as run.sh builds Tessera and candle.
#
# Idempotent: prints the folder holding the two binaries. Needs cmake and a
# C++ compiler (installed with apt-get when missing). ~10 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/../.."

version=0.3.36
sha256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
url=https://files.pythonhosted.org/packages/ec/e9/e7de2b0463ea3ffbf0ede6cb21b58c1258a8f6521aae45ca773a59fe7cf3/llama_cpp_python-$version.tar.gz
root=target/llama-cpp
bin=$root/build/bin
if [[ -x $bin/llama-bench && -x $bin/llama-batched-bench ]]; then
    echo "$bin"
    exit 0
fi

if ! command -v cmake >/dev/null || ! command -v g++ >/dev/null; then
    echo "installing cmake and g++ (apt-get)" >&2
    apt-get update -q >&2 && apt-get install -y -q cmake g++ >&2
fi

mkdir -p "$root"
archive=$root/llama_cpp_python-$version.tar.gz
if [[ ! -f $archive ]] || ! echo "$sha256  $archive" | sha256sum -c --quiet 2>/dev/null; then
    echo "downloading llama-cpp-python $version (76 MB)" >&2
    curl -sSfL --retry 3 -o "$archive.part" "$url"
    echo "$sha256  $archive.part" | sha256sum -c --quiet
    mv "$archive.part" "$archive"
fi
src=$root/llama_cpp_python-$version/vendor/llama.cpp
if [[ ! -f $src/CMakeLists.txt ]]; then
    tar -xzf "$archive" -C "$root"
fi

echo "building llama.cpp (llama-bench, llama-batched-bench) for the native CPU" >&2
cmake -S "$src" -B "$root/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
    -DBUILD_SHARED_LIBS=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF >&2
cmake --build "$root/build" --config Release -j "$(nproc)" \
    --target llama-bench llama-batched-bench >&2
echo "$bin"
