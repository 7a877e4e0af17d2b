#!/usr/bin/env python3
"""Joins distro_gpu_bench's JSON (ours) and demo_reference.py's JSON (PyTorch) into one table.

Usage: table.py OURS.json REFERENCE.json [--md FILE]
"""
import json
import sys


def main():
    if len(sys.argv) < 3:
        print(__doc__)
        return 2
    ours = json.load(open(sys.argv[1]))
    ref = json.load(open(sys.argv[2]))
    floor = ours["floor_s"]
    # demo: the published step's all-gather through torch.distributed; demo_clone: the same step with
    # the collective replaced by a clone (the reference of the first seven sessions).
    demo = {d["k"]: d for d in ref.get("demo", [])}
    clone = {d["k"]: d for d in ref.get("demo_clone", [])}

    def ratio(table, k, t):
        return f"{table[k]['step_s'] / t:.1f}x" if k in table else "-"

    rows = []
    for o in ours["ours"]:
        k = o["k"]
        for name, t in ((f"ours, k={k}: compress + apply", o["step_s"]),
                        (f"ours, k={k}: + gradient check", o["step_s"] + o["check_s"])):
            rows.append((name, t, ratio(demo, k, t), ratio(clone, k, t), f"{t / floor:.2f}"))
    for k, d in sorted(demo.items()):
        rows.append((f"DeMo reference (PyTorch, all-gather via NCCL), k={k}", d["step_s"], "1.0x",
                     ratio(clone, k, d["step_s"]), f"{d['step_s'] / floor:.2f}"))
    for k, d in sorted(clone.items()):
        rows.append((f"DeMo reference, all-gather as a clone, k={k}", d["step_s"], ratio(demo, k, d["step_s"]),
                     "1.0x", f"{d['step_s'] / floor:.2f}"))
    if "adamw_fused_s" in ref:
        rows.append(("torch AdamW(fused=True)", ref["adamw_fused_s"], "-", "-", f"{ref['adamw_fused_s'] / floor:.2f}"))
    rows.append(("floor: 20 B/param / copy bandwidth", floor, "-", "-", "1.00"))

    lines = [f"GPU: {ours['gpu']}; model {ours['model']}, {ours['params']:,} parameters, fp32, chunk 64, sign values",
             f"device-to-device copy: {ours['copy_bytes_per_s'] * 1e-12:.2f} TB/s (ours), "
             f"{ref.get('copy_bytes_per_s', 0) * 1e-12:.2f} TB/s (torch); medians of {ours['reps']} steps",
             "",
             "| step | ms | DeMo reference / this (same k) | reference with a clone / this | this / floor |",
             "|---|---:|---:|---:|---:|"]
    for name, t, r1, r2, r3 in rows:
        lines.append(f"| {name} | {t * 1e3:.2f} | {r1} | {r2} | {r3} |")
    text = "\n".join(lines)
    print(text)
    if "--md" in sys.argv:
        open(sys.argv[sys.argv.index("--md") + 1], "w").write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
