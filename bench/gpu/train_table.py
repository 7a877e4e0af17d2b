#!/usr/bin/env python3
"""Side-by-side table of one training-throughput comparison: ours (distro_gpu_train_bench --json)
against PyTorch (bench/reference/llama_torch_train.py --json), same preset, batch and sequence.

Usage: train_table.py OURS.json TORCH.json [OURS_OVERLAP.json]
"""
import json
import sys

import os

ours, torch = (json.load(open(p)) for p in sys.argv[1:3])
ovl = json.load(open(sys.argv[3])) if len(sys.argv) > 3 and os.path.exists(sys.argv[3]) else None
ratio = ours["tokens_per_s"] / torch["tokens_per_s"]
print(f"\n### {ours['preset']}: {ours['params']:,} parameters, batch {ours['batch']} x {ours['seq']}"
      f" ({torch.get('device', '')})\n")
print("| | tokens/s | step ms | MFU | memory |")
print("|---|---|---|---|---|")
mb = ours["micro_batch"] or ours["batch"]
print(f"| libdistro, DisTrO step (micro-batch {mb}) | {ours['tokens_per_s']:,.0f} | {ours['step_ms']:.1f} |"
      f" {ours['mfu']:.3f} | {ours['memory_used_bytes'] / 1e9:.1f} GB in use |")
if ovl:
    print(f"| libdistro, DisTrO step with `--overlap` | {ovl['tokens_per_s']:,.0f} | {ovl['step_ms']:.1f} |"
          f" {ovl['mfu']:.3f} | {ovl['memory_used_bytes'] / 1e9:.1f} GB in use |")
print(f"| PyTorch + transformers, AdamW (micro-batch {torch['micro_batch']}) | {torch['tokens_per_s']:,.0f} |"
      f" {torch['step_ms']:.1f} | {torch['mfu']:.3f} | {torch['peak_memory_bytes'] / 1e9:.1f} GB peak |")
print(f"\nours / PyTorch: {ratio:.2f}x tokens/s; our optimizer share {ours['optimizer_ms']:.1f} ms of {ours['step_ms']:.1f} ms")
if ovl:
    print(f"with --overlap: {ovl['tokens_per_s'] / torch['tokens_per_s']:.2f}x tokens/s")
