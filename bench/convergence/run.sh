#!/usr/bin/env bash
# The convergence-and-bandwidth benchmark: DisTrO against AdamW with an exact all-reduce, on the same
# model, data, token budget and seed, with 4 local peers. Writes the JSON logs, a table
# (docs/convergence-PRESET.md) and a loss-curve PNG (docs/convergence-PRESET.png).
#
#   bench/convergence/run.sh PRESET STEPS [extra distro train options for both runs]
#   e.g. bench/convergence/run.sh nano 550   (about 15 minutes on 2 cores)
#
# The tuned settings of each optimizer are below; docs/benchmarks.md records how they were chosen.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
preset=${1:?preset}
steps=${2:?steps}
shift 2
out=build/convergence/$preset
mkdir -p "$out" docs
[[ -s data/kjv.txt ]] || tools/prepare_data.sh data/kjv.txt
if ! /usr/bin/python3 -c "import matplotlib" 2>/dev/null; then
  echo "convergence: the plot needs Debian's python3-matplotlib (apt-get install python3-matplotlib)" >&2
  exit 1
fi
[[ -x build/bin/distro ]] || { echo "convergence: build first (./quickstart run)" >&2; exit 1; }

common=(--data data/kjv.txt --preset "$preset" --peers 4 --steps "$steps" --batch 8 --seq 128 --seed 1
        --eval-every $((steps / 20 > 0 ? steps / 20 : 1)) --eval-batches 16 --quiet)
distro_opts=(${DISTRO_OPTS:---optimizer distro --lr 3e-3 --topk 4 --decay 0.999})
adamw_opts=(${ADAMW_OPTS:---optimizer adamw --lr 3e-3})

# Both runs at once, one CPU thread each, so they share the machine alike.
echo "convergence: $preset, $steps steps: DisTrO (${distro_opts[*]}) and AdamW (${adamw_opts[*]})"
build/bin/distro train "${common[@]}" --threads 1 "${distro_opts[@]}" "$@" --json "$out/distro.json" &
d=$!
build/bin/distro train "${common[@]}" --threads 1 "${adamw_opts[@]}" "$@" --json "$out/adamw.json" &
a=$!
wait $d
wait $a

/usr/bin/python3 bench/convergence/report.py "$preset" "$out/distro.json" "$out/adamw.json" \
  "docs/convergence-$preset.md" "docs/convergence-$preset.png" "${distro_opts[*]}" "${adamw_opts[*]}"
