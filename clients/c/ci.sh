#!/usr/bin/env bash
# CI for the C client (clients/c): on a fresh Debian machine, as root, install the
# toolchain and libraries from apt if missing, then build the library and the example,
# run the unit tests over schemas/wire/vectors.json (plain, then under ASan + UBSan) and
# a bounded libFuzzer run of the reply parser and the unsealer. Any failure fails loudly.
#   FUZZ_SECONDS=60 (per target; lower it where CI time is short)
#   VECTORS=path (default: the repository's schemas/wire/vectors.json)
# The end-to-end tests (tests/integration/test_c_client.py) run with the Python suite;
# the example this script builds is the binary they use.
set -euo pipefail
cd "$(dirname "$0")"
export DEBIAN_FRONTEND=noninteractive

need=()
command -v clang >/dev/null 2>&1 || need+=(clang)
command -v make >/dev/null 2>&1 || need+=(make)
command -v cc >/dev/null 2>&1 || need+=(gcc)
[ -f /usr/include/sodium.h ] || need+=(libsodium-dev)
[ -f /usr/include/jsmn.h ] || need+=(libjsmn-dev)
[ -f /usr/include/mosquitto.h ] || need+=(libmosquitto-dev)
# libFuzzer's runtime: only recommended by clang, and recommends may be off.
compgen -G "/usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-*.a" >/dev/null \
    || need+=(libclang-rt-14-dev)
if [ ${#need[@]} -gt 0 ]; then
    echo "clients/c/ci.sh: installing ${need[*]}"
    apt-get update -qq
    apt-get install -y -qq "${need[@]}" >/dev/null
fi

VECTORS="${VECTORS:-$(cd ../.. && pwd)/schemas/wire/vectors.json}"
if [ ! -f "$VECTORS" ]; then
    echo "clients/c/ci.sh: FAIL: $VECTORS is missing" >&2
    exit 1
fi

make lib example
make test VECTORS="$VECTORS"
make asan VECTORS="$VECTORS"
# libFuzzer exits non-zero (and writes build/crash-*) on any finding.
make fuzz FUZZ_SECONDS="${FUZZ_SECONDS:-60}"
echo "clients/c/ci.sh: all C checks passed"
