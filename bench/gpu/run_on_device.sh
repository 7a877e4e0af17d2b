#!/usr/bin/env bash
# Runs the CUDA backend's checks and the optimizer-step benchmark on a machine with an NVIDIA GPU,
# and prints one table last. From the repository root:
#
#   [DEPS_DIR=DIR] [FALLBACK_BIN=DIR] [PROFILE=1] bench/gpu/run_on_device.sh [BIN_DIR]
#
# Without BIN_DIR the script configures and builds here: CMake + Ninja, CUDA arch 90, Release,
# GUI and Vulkan off, tests on, into build-gpu/ (the GPU tests, both GPU benchmarks and distro).
# That needs OpenSSL's headers, Catch2 2, nlohmann/json, asio, SQLite and xxHash's header (xxhash.h);
# DEPS_DIR may hold the last five as a prefix (DIR/include/catch2, DIR/include/nlohmann,
# DIR/include/xxhash.h, DIR/lib/cmake/Catch2), e.g. copied from a
# Debian machine into the ignored folder .gpu-deps/deps and carried. If the build fails and
# FALLBACK_BIN names binaries built elsewhere, those run instead. BIN_DIR skips the build: binaries
# built elsewhere for this GPU (e.g. on a machine without a GPU: the same cmake line plus
# -DOPENSSL_USE_STATIC_LIBS=TRUE, so that they need only libstdc++ and the driver).
#
# Steps, each with its own time limit so that the table always prints:
#   1. the GPU tests (tests/gpu: device, hash, optimizer ops against the CPU, CPU/GPU peers);
#   2. (OPTBENCH=1, the default) the optimizer-step benchmark (ours) -> ours.json;
#   3. (OPTBENCH=1) the PyTorch DeMo reference, fused AdamW and copy bandwidth -> ref.json;
#   3b. (TRAIN=1, the default) training throughput, ours (distro_gpu_train_bench) against
#       transformers' Llama (bench/reference/llama_torch_train.py) for small and 1b -> train_*.json,
#       and `distro train --peers cpu,cuda:0` with its per-step hashes;
#   4. compute-sanitizer (SANITIZE=1, the default): memcheck over the optimizer and model tests,
#      racecheck over a small benchmark;
#   5. (PROFILE=1) Nsight Compute sections of one compress and one apply kernel;
#   6. the summary and the table.
# Logs go to a work folder; $OUT, when set, receives ours.json, ref.json, table.md and logs.tar.gz.
set -u
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/../.."
FINAL=${OUT:-}
OUT=$(mktemp -d)
BIN=${1:-}

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,clocks.mem --format=csv \
  2>&1 | tee "$OUT/gpu.txt"

if [ -z "$BIN" ]; then
  BUILD=build-gpu
  EXTRA=()
  if [ -n "${DEPS_DIR:-}" ]; then
    DEPS=$(cd "$DEPS_DIR" && pwd)
    EXTRA+=("-DCatch2_DIR=$DEPS/lib/cmake/Catch2" "-DCMAKE_CXX_FLAGS=-isystem $DEPS/include"
            "-DCMAKE_PREFIX_PATH=$DEPS")
    export LD_LIBRARY_PATH=$DEPS/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  fi
  t0=$SECONDS
  if cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 \
       -DDISTRO_GUI=OFF -DDISTRO_VULKAN=OFF -DDISTRO_TESTS=ON "${EXTRA[@]}" >"$OUT/build.log" 2>&1 &&
     ninja -C "$BUILD" distro_gpu_tests distro_gpu_bench distro_gpu_train_bench distro_cli >>"$OUT/build.log" 2>&1; then
    BIN=$BUILD/bin
    echo "built here in $((SECONDS - t0)) s: $BIN"
  else
    tail -30 "$OUT/build.log"
    if [ -n "${FALLBACK_BIN:-}" ]; then
      echo "build failed (log: build.log); running the binaries in $FALLBACK_BIN"
      BIN=$FALLBACK_BIN
    else
      echo "build failed (log: $OUT/build.log)"
      exit 1
    fi
  fi
fi
echo "binaries: $BIN"

summary=()
run_step() {  # name, limit_s, log, command...
  local name=$1 limit=$2 log=$3
  shift 3
  local t0=$SECONDS
  timeout "$limit" "$@" >"$log" 2>&1
  local rc=$?
  summary+=("$(printf '%-28s rc=%-3s %4ss  %s' "$name" "$rc" "$((SECONDS - t0))" "$(tail -1 "$log")")")
  return $rc
}

run_step "gpu tests" 300 "$OUT/tests.log" "$BIN/distro_gpu_tests" --durations yes
grep -E "passed|failed|FAILED|seed" "$OUT/tests.log" | tail -15

if [ "${OPTBENCH:-1}" = 1 ]; then
  run_step "benchmark (ours)" 200 "$OUT/ours.log" "$BIN/distro_gpu_bench" --json "$OUT/ours.json"
  cat "$OUT/ours.log"

  run_step "benchmark (PyTorch)" 240 "$OUT/ref.log" \
    python3 bench/reference/demo_reference.py --json "$OUT/ref.json"
  cat "$OUT/ref.log"
fi

if [ "${TRAIN:-1}" = 1 ]; then
  # The baseline's shapes (../shared/reference/gpu-baselines.md): small at batch 16 x 1024, 1b at
  # batch 8 x 2048, each whole; then 1b again in micro-batches of 1 for a 24 GB card's budget.
  run_step "train small (ours)" 150 "$OUT/train_small_ours.log" "$BIN/distro_gpu_train_bench" --preset small \
    --batch 16 --seq 1024 --steps 5 --warmup 2 --json "$OUT/train_small_ours.json"
  tail -14 "$OUT/train_small_ours.log"
  run_step "train small (PyTorch)" 150 "$OUT/train_small_torch.log" python3 bench/reference/llama_torch_train.py \
    --preset small --batch 16 --seq 1024 --steps 5 --warmup 2 --json "$OUT/train_small_torch.json"
  tail -2 "$OUT/train_small_torch.log"
  run_step "train 1b (ours)" 200 "$OUT/train_1b_ours.log" "$BIN/distro_gpu_train_bench" --preset 1b \
    --batch 8 --seq 2048 --steps 4 --warmup 2 --json "$OUT/train_1b_ours.json"
  tail -14 "$OUT/train_1b_ours.log"
  # The same with the update applied one step late (distro train --overlap): host codec and merge
  # on a second thread, behind the next step's GPU work.
  run_step "train small (ours, overlap)" 150 "$OUT/train_small_ovl_ours.log" "$BIN/distro_gpu_train_bench" \
    --preset small --batch 16 --seq 1024 --steps 5 --warmup 2 --overlap --json "$OUT/train_small_ovl_ours.json"
  tail -6 "$OUT/train_small_ovl_ours.log"
  run_step "train 1b (ours, overlap)" 200 "$OUT/train_1b_ovl_ours.log" "$BIN/distro_gpu_train_bench" --preset 1b \
    --batch 8 --seq 2048 --steps 4 --warmup 2 --overlap --json "$OUT/train_1b_ovl_ours.json"
  tail -6 "$OUT/train_1b_ovl_ours.log"
  # The 24 GB budget: the same batch in micro-batches of one sequence.
  run_step "train 1b (ours, 24 GB)" 200 "$OUT/train_1b_mb1_ours.log" "$BIN/distro_gpu_train_bench" --preset 1b \
    --batch 8 --micro-batch 1 --seq 2048 --steps 3 --warmup 1 --json "$OUT/train_1b_mb1_ours.json"
  tail -14 "$OUT/train_1b_mb1_ours.log"
  run_step "train 1b (PyTorch)" 200 "$OUT/train_1b_torch.log" python3 bench/reference/llama_torch_train.py \
    --preset 1b --batch 8 --seq 2048 --steps 4 --warmup 2 --json "$OUT/train_1b_torch.json"
  tail -2 "$OUT/train_1b_torch.log"
  run_step "distro train cpu,cuda:0" 120 "$OUT/mixed.log" "$BIN/distro" train --data tests/data/genesis.txt \
    --preset nano --peers cpu,cuda:0 --steps 20 --batch 4 --seq 64 --eval-every 0 --json "$OUT/mixed.json"
  python3 - "$OUT/mixed.json" <<'PY' || true
import json, sys
j = json.load(open(sys.argv[1]))
steps = [s for s in j.get("steps", []) if "hashes" in s]
same = all(len(set(s["hashes"])) == 1 for s in steps)
print(f"cpu,cuda:0: {len(steps)} logged steps, equal hashes at every one: {same}")
for s in steps[:3] + steps[-2:]:
    print(f"  step {s['step']}: {s['hashes']}")
PY
fi

if [ "${SANITIZE:-1}" = 1 ] && command -v compute-sanitizer >/dev/null; then
  run_step "compute-sanitizer memcheck" "${SANITIZER_LIMIT:-240}" "$OUT/memcheck.log" \
    compute-sanitizer --tool memcheck --report-api-errors no --error-exitcode 9 \
    "$BIN/distro_gpu_tests" "[optimizer],[model]"
  grep -E "ERROR SUMMARY|Invalid|out of bounds" "$OUT/memcheck.log" | head -10
elif [ "${SANITIZE:-1}" = 1 ]; then
  summary+=("compute-sanitizer: not installed")
fi

if [ "${SANITIZE:-1}" = 1 ] && command -v compute-sanitizer >/dev/null; then
  # Shared-memory races in the chunk loops: a 4096x4096 tensor, ~10 chunks per persistent block.
  run_step "compute-sanitizer racecheck" "${RACECHECK_LIMIT:-240}" "$OUT/racecheck.log" \
    compute-sanitizer --tool racecheck --error-exitcode 9 \
    "$BIN/distro_gpu_bench" --model params:16777216 --topk 4,32 --reps 1 --warmup 0
  grep -E "RACECHECK SUMMARY|ERROR SUMMARY|hazard" "$OUT/racecheck.log" | head -5
fi

if [ "${PROFILE:-0}" = 1 ] && command -v ncu >/dev/null; then
  run_step "ncu compress64" 120 "$OUT/ncu_compress.log" ncu --clock-control none -k regex:compress64 \
    --launch-skip 30 --launch-count 1 --section SpeedOfLight --section Occupancy --section MemoryWorkloadAnalysis \
    --section WarpStateStats --section SchedulerStats --section ComputeWorkloadAnalysis \
    "$BIN/distro_gpu_bench" --topk 32 --reps 1 --warmup 0
  run_step "ncu apply64" 120 "$OUT/ncu_apply.log" ncu --clock-control none -k regex:apply64 \
    --launch-skip 30 --launch-count 1 --section SpeedOfLight --section Occupancy \
    "$BIN/distro_gpu_bench" --topk 32 --reps 1 --warmup 0
  grep -E "Duration|Throughput|Achieved Occupancy|Registers|Block Limit" "$OUT/ncu_compress.log" "$OUT/ncu_apply.log" | head -30
fi

echo
echo "== summary =="
printf '%s\n' "${summary[@]}"
grep -E "^(All tests passed|test cases:)" "$OUT/tests.log" | tail -2
grep -E "ERROR SUMMARY" "$OUT/memcheck.log" 2>/dev/null | tail -1
grep -E "RACECHECK SUMMARY|ERROR SUMMARY" "$OUT/racecheck.log" 2>/dev/null | tail -1
echo
if [ -f "$OUT/ours.json" ] && [ -f "$OUT/ref.json" ]; then
  python3 bench/gpu/table.py "$OUT/ours.json" "$OUT/ref.json" --md "$OUT/table.md"
elif [ "${OPTBENCH:-1}" = 1 ]; then
  echo "no optimizer table: a benchmark step failed (logs in $OUT)"
fi
for p in small 1b; do
  if [ -f "$OUT/train_${p}_ours.json" ] && [ -f "$OUT/train_${p}_torch.json" ]; then
    python3 bench/gpu/train_table.py "$OUT/train_${p}_ours.json" "$OUT/train_${p}_torch.json" \
      "$OUT/train_${p}_ovl_ours.json" | tee -a "$OUT/table.md"
  elif [ "${TRAIN:-1}" = 1 ]; then
    echo "no $p training table: a benchmark step failed (logs in $OUT)"
  fi
done
if [ -n "$FINAL" ]; then
  mkdir -p "$FINAL"
  for f in ours.json ref.json table.md mixed.json train_small_ours.json train_small_torch.json train_1b_ours.json \
    train_1b_torch.json train_1b_mb1_ours.json train_small_ovl_ours.json train_1b_ovl_ours.json; do [ -f "$OUT/$f" ] && cp "$OUT/$f" "$FINAL/"; done
  tar czf "$FINAL/logs.tar.gz" -C "$OUT" .
fi
