"""Table and loss-curve plot of one convergence benchmark (bench/convergence/run.sh)."""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

preset, distro_path, adamw_path, table_path, png_path, distro_opts, adamw_opts = sys.argv[1:8]
runs = {"DisTrO": json.load(open(distro_path)), "AdamW + all-reduce": json.load(open(adamw_path))}

fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
for (name, run), color in zip(runs.items(), ("tab:red", "tab:blue")):
    steps = run["steps"]
    ax.plot([r["tokens"] for r in steps], [r["train_loss"] for r in steps], color=color, alpha=0.3, lw=0.8)
    val = [r for r in steps if "val_loss" in r]
    ax.plot([r["tokens"] for r in val], [r["val_loss"] for r in val], color=color, lw=2, marker="o", ms=3,
            label=f"{name} (validation)")
ax.set_xlabel("tokens (all peers)")
ax.set_ylabel("cross-entropy (nats per byte)")
ax.set_title(f"{preset}: DisTrO vs AdamW with all-reduce, 4 peers (thin lines: training)")
ax.grid(alpha=0.3)
ax.legend()
fig.tight_layout()
fig.savefig(png_path)

d, a = runs["DisTrO"]["summary"], runs["AdamW + all-reduce"]["summary"]
gap = (d["final_val_loss"] - a["final_val_loss"]) / a["final_val_loss"] * 100
rows = [
    ("final validation loss", f"{d['final_val_loss']:.4f}", f"{a['final_val_loss']:.4f}"),
    ("final training loss (mean of last 10 steps)", f"{d['final_train_loss']:.4f}", f"{a['final_train_loss']:.4f}"),
    ("steps / tokens", f"{d['steps']} / {d['tokens']}", f"{a['steps']} / {a['tokens']}"),
    ("parameters", f"{d['params']}", f"{a['params']}"),
    ("bytes up per peer per step", f"{d['bytes_up_per_peer_step']:.0f}", f"{a['bytes_up_per_peer_step']:.0f}"),
    ("bytes down per peer per step", f"{d['bytes_down_per_peer_step']:.0f}", f"{a['bytes_down_per_peer_step']:.0f}"),
    ("bf16 ring all-reduce bytes per peer per step", f"{d['allreduce_bytes_per_peer_step']}", f"{a['allreduce_bytes_per_peer_step']}"),
    ("traffic reduction vs all-reduce", f"{d['reduction']:.0f}x", "1x"),
    ("wall time (s)", f"{d['seconds']:.0f}", f"{a['seconds']:.0f}"),
]
with open(table_path, "w") as f:
    f.write(f"# Convergence benchmark: {preset}\n\n")
    f.write(f"DisTrO settings: `{distro_opts}`; AdamW settings: `{adamw_opts}`.\n\n")
    f.write("| | DisTrO | AdamW + all-reduce |\n|---|---|---|\n")
    for r in rows:
        f.write(f"| {r[0]} | {r[1]} | {r[2]} |\n")
    f.write(f"\nDisTrO's final validation loss is {gap:+.2f}% against AdamW's, at {d['reduction']:.0f}x less traffic "
            f"per peer per step.\n\n![loss curves](convergence-{preset}.png)\n")
print(open(table_path).read())
