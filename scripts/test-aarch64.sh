#!/usr/bin/env bash
# Run the kernel tests (every SIMD level against the scalar code, bit for bit) as AArch64
# binaries under qemu, so the NEON kernels are checked on an x86 machine.
#
#   apt-get install gcc-aarch64-linux-gnu qemu-user   # once (Debian/Ubuntu)
#   rustup target add aarch64-unknown-linux-gnu        # once
#   scripts/test-aarch64.sh                           # extra arguments go to cargo test
set -euo pipefail

for tool in aarch64-linux-gnu-gcc qemu-aarch64; do
    command -v "$tool" > /dev/null || {
        echo "error: $tool is missing; apt-get install gcc-aarch64-linux-gnu qemu-user" >&2
        exit 1
    }
done
rustup target list --installed | grep -qx aarch64-unknown-linux-gnu || {
    echo "error: the aarch64 standard library is missing; rustup target add aarch64-unknown-linux-gnu" >&2
    exit 1
}

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
exec cargo test -p seek-kernels --release --target aarch64-unknown-linux-gnu "$@"
