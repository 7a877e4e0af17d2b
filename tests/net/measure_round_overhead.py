#!/usr/bin/python3
"""Measures a network run on loopback against the in-process run with the same settings
(docs/network.md, "measured"): wall time per round, the coordinator's time per round against the
slowest node's training time in that round (the protocol's overhead), the in-process step time, and
the bytes each node moved per round. Not a test; run it by hand:

  /usr/bin/python3 tests/net/measure_round_overhead.py --distro build/bin/distro [--nodes 4]
      [--steps 30] [--batch 2] [--seq 64] [--checkpoint-every 1] [--overlap] [--json out.json]

--overlap runs both the network run ("overlap": true) and the in-process run (--overlap) overlapped
(docs/network.md, "Overlapped rounds"); round_interval_s_mean is then the wall time per round to
compare with a run without it.
"""
import argparse
import datetime
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import netutil as nu  # noqa: E402

TS = r"(\d\d):(\d\d):(\d\d)\.(\d\d\d)"
ROUND_RE = re.compile(TS + r" serve step: step (\d+)/\d+: (\d+) of \d+ payloads .*update (\d+) B, hash \w+, ([\d.]+) s")
TRAIN_RE = re.compile(r"node info: step (\d+): trained batch \d+, loss [\d.]+, grad norm [\d.]+, payload (\d+) B, ([\d.]+) s")
FINAL_RE = re.compile(r"trained (\d+) batches \((\d+) merged\), (\d+) B sent, (\d+) B received")


def seconds(m):
    h, mi, s, ms = (int(m.group(i)) for i in range(1, 5))
    return h * 3600 + mi * 60 + s + ms / 1000.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--distro", required=True)
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--preset", default="nano")
    ap.add_argument("--checkpoint-every", type=int, default=1)
    ap.add_argument("--overlap", action="store_true")
    ap.add_argument("--json")
    a = ap.parse_args()
    import os
    os.environ["DISTRO_BIN"] = a.distro
    skip = 2  # warm-up rounds left out of the means

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tokens = {f"n{i}": f"measure-token-{i:04d}-abcdefgh" for i in range(a.nodes)}
        cfg = nu.write_config(tmp, tokens, steps=a.steps, nodes_per_round=a.nodes, fill_wait_s=60, batch=a.batch,
                              seq=a.seq, preset=a.preset, checkpoint_every=a.checkpoint_every,
                              **({"overlap": True} if a.overlap else {}))
        t0 = time.time()
        serve, port, fp = nu.start_serve(tmp, cfg)
        nodes = [nu.start_node(tmp, n, port, t) for n, t in tokens.items()]
        serve.wait(3600)
        for n in nodes:
            n.wait(60)
        net_wall = time.time() - t0
        slog = serve.text()
        nlogs = [n.text() for n in nodes]
        serve.close()
        for n in nodes:
            n.close()

        rounds = {int(m.group(5)): (seconds(m), float(m.group(8)), int(m.group(7)), int(m.group(6)))
                  for m in ROUND_RE.finditer(slog)}
        assert len(rounds) == a.steps, slog[-3000:]
        train = {}
        for log in nlogs:
            for m in TRAIN_RE.finditer(log):
                train.setdefault(int(m.group(1)), []).append((float(m.group(3)), int(m.group(2))))
        steps = [s for s in sorted(rounds) if s > skip]
        gaps = [rounds[s][0] - rounds[s - 1][0] for s in steps]
        coord = [rounds[s][1] for s in steps]
        slowest = [max(t for t, _ in train[s]) for s in steps]
        overhead = [c - t for c, t in zip(coord, slowest)]
        payload = statistics.mean(p for s in steps for _, p in train[s])
        update = statistics.mean(rounds[s][2] for s in steps)
        sent = [int(FINAL_RE.search(log).group(3)) for log in nlogs]
        recv = [int(FINAL_RE.search(log).group(4)) for log in nlogs]

        out = tmp / "train.json"
        t1 = time.time()
        subprocess.run([a.distro, "train", "--data", str(nu.DATA), "--preset", a.preset, "--peers", str(a.nodes),
                        "--steps", str(a.steps), "--batch", str(a.batch), "--seq", str(a.seq), "--seed", "1",
                        "--threads", "1", "--eval-every", "0", "--eval-batches", "1", "--quiet", "--json", str(out)]
                       + (["--overlap"] if a.overlap else []), check=True)
        train_wall = time.time() - t1
        tj = json.loads(out.read_text())
        inproc = [r["seconds"] for r in tj["steps"] if r["step"] > skip]
        allreduce = tj["summary"]["allreduce_bytes_per_peer_step"]

    res = {
        "overlap": a.overlap, "nodes": a.nodes, "steps": a.steps, "checkpoint_every": a.checkpoint_every, "batch": a.batch, "seq": a.seq, "preset": a.preset,
        "net_wall_s": net_wall, "inprocess_wall_s": train_wall,
        "round_interval_s_mean": statistics.mean(gaps),
        "coordinator_round_s_mean": statistics.mean(coord),
        "slowest_node_train_s_mean": statistics.mean(slowest),
        "overhead_s_mean": statistics.mean(overhead), "overhead_s_median": statistics.median(overhead),
        "inprocess_step_s_mean": statistics.mean(inproc),
        "inprocess_per_peer_s_mean": statistics.mean(inproc) / a.nodes,
        "payload_bytes_mean": payload, "update_bytes_mean": update,
        "node_sent_bytes_per_round": statistics.mean(sent) / a.steps,
        "node_received_bytes_per_round": statistics.mean(recv) / a.steps,
        "bf16_ring_allreduce_bytes_per_peer_step": allreduce,
    }
    w = max(len(k) for k in res)
    for k, v in res.items():
        print(f"{k:<{w}}  {v:.4f}" if isinstance(v, float) else f"{k:<{w}}  {v}")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
