#!/usr/bin/env bash
# The command line's answers to bad input: the exit status (2 for usage, 1 for a failure) and a
# message that names what was wrong. Usage: test_cli.sh path/to/distro path/to/small-text
set -u
distro=$1
text=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
passed=0
failed=0

# expect STATUS WORDS -- command...
expect() {
  local want=$1 words=$2
  shift 3
  local out status
  out=$("$@" 2>&1)
  status=$?
  if [[ $status -eq $want && $out == *"$words"* ]]; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    echo "FAILED: $* -> status $status (expected $want), output: $out" >&2
    echo "        expected the words: $words" >&2
  fi
}

expect 2 "usage: distro" -- "$distro"
expect 2 "unknown command 'frobnicate'" -- "$distro" frobnicate
expect 2 "unknown option '--stepz'" -- "$distro" train --stepz 3
expect 2 "--steps is 'many'; expected a whole number" -- "$distro" train --steps many
expect 2 "--steps is '0'" -- "$distro" train --steps 0
expect 2 "--lr is 'fast'" -- "$distro" train --lr fast
expect 2 "option --data needs a value" -- "$distro" train --data
expect 2 "--optimizer is 'sgd'; expected distro or adamw" -- "$distro" train --optimizer sgd --data "$text"
expect 2 "--peers 'cpu,,cpu' has an empty entry" -- "$distro" train --peers cpu,,cpu --data "$text"
expect 2 "--values is 'fp4'; expected sign or int8" -- "$distro" train --values fp4 --data "$text"
expect 1 "missing.txt" -- "$distro" train --data "$tmp/missing.txt" --steps 1
expect 1 "no device named 'cuda:9'" -- "$distro" train --data "$text" --peers cpu,cuda:9 --steps 1
expect 1 "unknown model preset" -- "$distro" train --data "$text" --preset huge --steps 1
expect 2 "--device goes with --peers N" -- "$distro" train --data "$text" --peers cpu,cpu --device cpu --steps 1
expect 1 "no device named 'cuda:9'" -- "$distro" train --data "$text" --peers 2 --device cuda:9 --steps 1
expect 1 "overlap needs the distro optimizer" -- "$distro" train --data "$text" --optimizer adamw --overlap --steps 1
expect 1 "no checkpoint at" -- "$distro" train --resume "$tmp/nothing"
expect 2 "cannot be combined with --resume" -- "$distro" train --resume "$tmp/x" --lr 0.1
printf 'DSTRCKPTgarbage-garbage-garbage-garbage-garbage-garbage' >"$tmp/bad.bin"
expect 1 "checkpoint" -- "$distro" train --resume "$tmp/bad.bin"
expect 0 "replicas agree" -- "$distro" train --data "$text" --peers 2 --steps 2 --batch 2 --seq 16 --threads 1 \
  --checkpoint "$tmp/ck" --json "$tmp/run.json"
expect 0 "the run is already complete" -- "$distro" train --resume "$tmp/ck"
expect 0 "step 3/3" -- "$distro" train --resume "$tmp/ck" --steps 3
expect 0 '"name": "cpu"' -- "$distro" devices --json
expect 0 "bits/param" -- "$distro" compress --model params:65536 --steps 1
expect 0 "forward + backward" -- "$distro" bench model --batch 1 --seq 8 --repeat 1 --threads 1
expect 2 "expected optimizer, model, network or codec" -- "$distro" bench gpu
# bench network: real payloads from 2 trainer peers; simulated ones; the all-reduce column is
# 2 (N-1)/N * 2 bytes * 918656 nano parameters = 1837312 for N = 2.
expect 0 "1837312" -- "$distro" bench network --preset nano --nodes 2 --rounds 1 --batch 1 --seq 8 --threads 1 \
  --data "$text" --json "$tmp/net.json"
expect 0 "correlated" -- "$distro" bench network --preset nano --payloads simulated --nodes 2,3 --rounds 1
expect 2 "--nodes entry '1' is not a node count" -- "$distro" bench network --nodes 1
expect 2 "--payloads 'fake' is unknown" -- "$distro" bench network --payloads fake
expect 1 "no text file" -- "$distro" bench network --preset nano --data "$tmp/missing.txt"
# bench codec: the host codec and merge of one round on simulated payloads (nano: 242 chunks).
expect 0 "242 chunks" -- "$distro" bench codec --preset nano --nodes 1,2 --repeat 1 --json "$tmp/codec.json"
expect 2 "--nodes entry '0' is not a node count" -- "$distro" bench codec --nodes 0

echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
