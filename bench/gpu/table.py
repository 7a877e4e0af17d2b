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
    demo = {d["k"]: d for d in ref.get("demo", [])}
    rows = []
    for o in ours["ours"]:
        k = o["k"]
        d = demo.get(k)
        rows.append((f"ours, k={k}: compress + apply", o["step_s"],
                     f"{d['step_s'] / o['step_s']:.1f}x" if d else "-", f"{o['step_s'] / floor:.2f}"))
        rows.append((f"ours, k={k}: + gradient check", o["step_s"] + o["check_s"],
                     f"{d['step_s'] / (o['step_s'] + o['check_s']):.1f}x" if d else "-",
                     f"{(o['step_s'] + o['check_s']) / floor:.2f}"))
    for k, d in sorted(demo.items()):
        rows.append((f"DeMo reference (PyTorch), k={k}", d["step_s"], "1.0x", f"{d['step_s'] / floor:.2f}"))
    if "adamw_fused_s" in ref:
        rows.append(("torch AdamW(fused=True)", ref["adamw_fused_s"], "-", f"{ref['adamw_fused_s'] / floor:.2f}"))
    rows.append(("floor: 20 B/param / copy bandwidth", floor, "-", "1.00"))

    lines = [f"GPU: {ours['gpu']}; model {ours['model']}, {ours['params']:,} parameters, fp32, chunk 64, sign values",
             f"device-to-device copy: {ours['copy_bytes_per_s'] * 1e-12:.2f} TB/s (ours), "
             f"{ref.get('copy_bytes_per_s', 0) * 1e-12:.2f} TB/s (torch); medians of {ours['reps']} steps",
             "",
             "| step | ms | DeMo reference / this (same k) | this / floor |",
             "|---|---:|---:|---:|"]
    for name, t, r1, r2 in rows:
        lines.append(f"| {name} | {t * 1e3:.2f} | {r1} | {r2} |")
    text = "\n".join(lines)
    print(text)
    if "--md" in sys.argv:
        open(sys.argv[sys.argv.index("--md") + 1], "w").write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
