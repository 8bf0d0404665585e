#!/bin/sh
# Decode speed of a model larger than its memory: seek and llama.cpp (llama-cpp-python) beside
# each other, on the same GGUF file, inside a memory cgroup of LIMIT MiB (cgroup v1 or v2;
# needs root), then without a limit. With the file larger than the limit, the mapped weights
# cannot all stay resident: the kernel drops pages and reads them again from disk each step.
#
#   cargo build --release -p seek-cli
#   sudo tools/bench_memory_limit.sh models/Qwen2.5-Coder-0.5B-Instruct-Q4_K_M.gguf 256
set -eu
MODEL=$1
LIMIT_MIB=$2
ARGS="--threads 2 --prefill 64 --decode-context 0 --decode-tokens 32 --repeats 3 --warmup 1 --bandwidth-mib 0"
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
    CG=/sys/fs/cgroup/seek-limit-$$
    mkdir "$CG"
    echo $((LIMIT_MIB * 1024 * 1024)) > "$CG/memory.max"
    echo 0 > "$CG/memory.swap.max" 2>/dev/null || true
else
    CG=/sys/fs/cgroup/memory/seek-limit-$$
    mkdir "$CG"
    echo $((LIMIT_MIB * 1024 * 1024)) > "$CG/memory.limit_in_bytes"
fi
trap 'rmdir "$CG" 2>/dev/null || true' EXIT
# Pages already cached were charged to whoever read them first and would not count against the
# limit: start cold, so that every page the model reads is charged to this cgroup.
sync
echo 3 > /proc/sys/vm/drop_caches
echo "== model $(du -m "$MODEL" | cut -f1) MiB, memory limit $LIMIT_MIB MiB"
sh -c "echo \$\$ > $CG/cgroup.procs; exec python3 tools/bench_llama_cpp.py $MODEL $ARGS"
echo "== no limit"
python3 tools/bench_llama_cpp.py "$MODEL" $ARGS
