#!/usr/bin/env python3
"""The published DeMo optimizer step in PyTorch, timed on a model's parameter shapes.

A faithful re-implementation (our own code) of the step of the DeMo class (bloc97/DeMo demo.py;
docs: shared/reference/distro-algorithm.md section 1.4) at world size 1, for comparison with
libdistro's CUDA optimizer (bench/gpu/gpu_optimizer_bench.cpp). Per tensor, in parameter order:

    p *= 1 - lr * wd                               (only when wd != 0; DeMo's default wd is 0)
    delta = beta * delta + lr * grad
    C = block DCT of delta                         (basis-matrix einsum, chunk 64 by the divisor rule)
    idx = top-k of |C| per chunk (unsorted), val = C[idx]
    delta -= block IDCT(scatter_mean(idx, val))    (error feedback)
    all-gather of idx and val                      (torch.distributed, NCCL, world size 1: two
                                                    async all_gather calls into fresh lists, then wait)
    U = block IDCT(scatter_mean(all idx, all val))
    grad = sign(U); SGD step p -= lr * grad        (torch.optim.SGD, momentum 0, foreach=False)

Left out of the published code: einops' rearrange is written as the reshape it computes, the basis
matrices' per-call .to(device) (a no-op) and the per-tensor step counter. `--gather clone` replaces
the collective by a clone of this peer's own tensors (what this script did before the eighth
session); by default both are timed, the collective first, so the two can be compared in one run.

Also timed: torch.optim.AdamW(fused=True) on the same parameters, and a device-to-device copy
(bytes read + written per second). Medians of CUDA-event timings after warm-up; fresh random
gradients (never zeros), restored outside the timed region before each step.

Usage: python3 demo_reference.py [--topk 4,32] [--gather nccl,clone] [--reps 5] [--warmup 2] [--json FILE]
"""
import argparse
import json
import math

import torch
import torch.distributed as dist


def llama_shapes(layers=16, d=2048, ffn=8192, vocab=32000):
    """The tensor list of libdistro/model/shapes.cpp llama_tensors (the 1.2B preset by default)."""
    t = [("tok_embeddings", (vocab, d))]
    for layer in range(layers):
        p = f"layers.{layer}."
        t += [(p + "attn_norm", (d,)), (p + "wq", (d, d)), (p + "wk", (d, d)), (p + "wv", (d, d)),
              (p + "wo", (d, d)), (p + "mlp_norm", (d,)), (p + "w_gate", (ffn, d)), (p + "w_up", (ffn, d)),
              (p + "w_down", (d, ffn))]
    t += [("norm", (d,)), ("output", (vocab, d))]
    return t


def chunk_edge(n, s):
    """Largest divisor of n that is <= s (DeMo's _get_smaller_split)."""
    if n <= s:
        return n
    for c in range(s, 0, -1):
        if n % c == 0:
            return c
    return 1


def dct_basis(n, device, dtype):
    """Orthonormal DCT-II matrix B[i, f] = sqrt(a_f / n) cos(pi (2i + 1) f / 2n): row = sample."""
    i = torch.arange(n, dtype=torch.float64).unsqueeze(1)
    f = torch.arange(n, dtype=torch.float64).unsqueeze(0)
    scale = torch.full((1, n), math.sqrt(2.0 / n), dtype=torch.float64)
    scale[0, 0] = math.sqrt(1.0 / n)
    return (scale * torch.cos(math.pi * (2 * i + 1) * f / (2 * n))).to(device=device, dtype=dtype)


class DeMoReference:
    def __init__(self, params, lr, topk=32, chunk=64, beta=0.999, weight_decay=0.0, gather="nccl"):
        self.params = list(params)
        self.gather = gather
        self.lr, self.topk, self.chunk, self.beta, self.wd = lr, topk, chunk, beta, weight_decay
        self.delta = [torch.zeros_like(p) for p in self.params]
        self.fwd, self.inv = {}, {}  # basis per edge: forward B, inverse B^T (DeMo's _dct(I), _idct(I))
        for p in self.params:
            for s in p.shape:
                n = chunk_edge(s, chunk)
                if n not in self.fwd:
                    b = dct_basis(n, p.device, p.dtype)
                    self.fwd[n], self.inv[n] = b, b.t().contiguous()
        self.sgd = torch.optim.SGD(self.params, lr=lr, momentum=0.0, dampening=0.0, nesterov=False,
                                   weight_decay=0.0, foreach=False)
        self.bytes_sent = 0

    def encode(self, x):
        if x.dim() > 1:
            n1, n2 = chunk_edge(x.shape[0], self.chunk), chunk_edge(x.shape[1], self.chunk)
            x = x.reshape(x.shape[0] // n1, n1, x.shape[1] // n2, n2)  # (y h) (x w) -> y h x w
            return torch.einsum("yhxw,hb,wd->yxbd", x, self.fwd[n1], self.fwd[n2])
        n = chunk_edge(x.shape[0], self.chunk)
        return torch.einsum("xw,wb->xb", x.reshape(-1, n), self.fwd[n])

    def decode(self, c):
        if c.dim() > 2:
            n1, n2 = c.shape[2], c.shape[3]
            x = torch.einsum("yxbd,bh,dw->yhxw", c, self.inv[n1], self.inv[n2])
            return x.reshape(x.shape[0] * x.shape[1], x.shape[2] * x.shape[3])
        return torch.einsum("xb,bw->xw", c, self.inv[c.shape[1]]).reshape(-1)

    @staticmethod
    def scatter_mean(shape, idx, val, like):
        """Mean of the values sent for each coefficient; coefficients nobody sent stay 0."""
        flat = torch.zeros(shape[:-2] + (shape[-2] * shape[-1],) if len(shape) > 2 else shape,
                           device=like.device, dtype=like.dtype)
        flat.scatter_reduce_(-1, idx, val, reduce="mean", include_self=False)
        return flat.reshape(shape)

    def all_gather(self, idx, val):
        """Every rank's idx and val, as the published class gathers them: one fresh list entry per rank,
        both collectives in flight, then wait. At world size 1 with `gather="clone"`: copies of our own."""
        if self.gather == "clone":
            return [idx.clone()], [val.clone()]
        n = dist.get_world_size()
        all_idx = [torch.zeros_like(idx) for _ in range(n)]
        all_val = [torch.zeros_like(val) for _ in range(n)]
        h_idx = dist.all_gather(all_idx, idx, async_op=True)
        h_val = dist.all_gather(all_val, val, async_op=True)
        h_idx.wait()
        h_val.wait()
        return all_idx, all_val

    @torch.no_grad()
    def step(self):
        self.bytes_sent = 0
        for p, delta in zip(self.params, self.delta):
            if self.wd != 0.0:
                p.mul_(1.0 - self.lr * self.wd)
            delta.mul_(self.beta)
            delta.add_(p.grad, alpha=self.lr)
            c = self.encode(delta)
            shape = tuple(c.shape)
            flat = c.reshape(shape[:-2] + (shape[-2] * shape[-1],)) if c.dim() > 2 else c
            k = max(1, min(self.topk, flat.shape[-1]))
            idx = torch.topk(flat.abs(), k=k, dim=-1, largest=True, sorted=False).indices
            val = torch.gather(flat, -1, idx)
            delta.sub_(self.decode(self.scatter_mean(shape, idx, val, p)))
            gathered_idx, gathered_val = self.all_gather(idx, val)
            self.bytes_sent += idx.nbytes + val.nbytes
            u = self.decode(self.scatter_mean(shape, torch.cat(gathered_idx, -1), torch.cat(gathered_val, -1), p))
            p.grad.copy_(u)
            p.grad.sign_()
        self.sgd.step()


def timed(fn, reps, warmup, before=None):
    """Median seconds of fn over reps after warmup runs, CUDA events; before() runs untimed."""
    times = []
    for r in range(warmup + reps):
        if before is not None:
            before()
        torch.cuda.synchronize()
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        fn()
        e1.record()
        e1.synchronize()
        if r >= warmup:
            times.append(e0.elapsed_time(e1) * 1e-3)
    times.sort()
    return times[len(times) // 2]


def copy_bandwidth(nbytes=2 << 30, reps=10):
    a = torch.randn(nbytes // 4, device="cuda")
    b = torch.empty_like(a)
    t = timed(lambda: b.copy_(a), reps, 2)
    del a, b
    return 2.0 * nbytes / t


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--topk", default="4,32")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--gather", default="nccl,clone",
                    help="all-gather variants to time: nccl (torch.distributed, as published), clone")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    gathers = args.gather.split(",")
    for g in gathers:
        if g not in ("nccl", "clone"):
            ap.error(f"--gather: unknown variant '{g}' (expected nccl or clone)")
    torch.manual_seed(0)
    dev = torch.device("cuda")
    shapes = llama_shapes(layers=args.layers)
    nparams = sum(math.prod(s) for _, s in shapes)
    print(f"GPU: {torch.cuda.get_device_name(0)}; torch {torch.__version__}; {nparams} parameters, "
          f"{len(shapes)} tensors", flush=True)
    out = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "params": nparams}

    bw = copy_bandwidth()
    out["copy_bytes_per_s"] = bw
    print(f"device-to-device copy: {bw * 1e-12:.2f} TB/s", flush=True)

    # Self-check of the transform on a small tensor: decode(encode(x)) == x to float32 precision.
    probe = DeMoReference([torch.nn.Parameter(torch.randn(192, 128, device=dev)),
                           torch.nn.Parameter(torch.randn(100, device=dev))], lr=1e-3, topk=4)
    x = torch.randn(192, 128, device=dev)
    err = (probe.decode(probe.encode(x)) - x).norm() / x.norm()
    xv = torch.randn(100, device=dev)
    errv = (probe.decode(probe.encode(xv)) - xv).norm() / xv.norm()
    print(f"self-check: block DCT round trip relative error {err.item():.2e} (2-D), {errv.item():.2e} (1-D)")
    assert err.item() < 1e-5 and errv.item() < 1e-5, "the reference transform does not invert"
    del probe

    params = [torch.nn.Parameter(torch.randn(s, device=dev) * 0.02) for _, s in shapes]
    grads = [torch.randn(s, device=dev) for _, s in shapes]

    def restore():
        for p, g in zip(params, grads):
            if p.grad is None:
                p.grad = g.clone()
            else:
                p.grad.copy_(g)

    if "nccl" in gathers:
        # One process, one rank: the published step's collectives run through NCCL as in a real job;
        # the in-process store needs no address or port.
        dist.init_process_group("nccl", store=dist.HashStore(), rank=0, world_size=1,
                                device_id=torch.device("cuda", torch.cuda.current_device()))
    key = {"nccl": "demo", "clone": "demo_clone"}  # the JSON names bench/gpu/table.py reads
    for g in gathers:
        out[key[g]] = []
    for k in [int(x) for x in args.topk.split(",")]:
        for g in gathers:
            opt = DeMoReference(params, lr=4e-4, topk=k, gather=g)
            t = timed(opt.step, args.reps, args.warmup, before=restore)
            print(f"DeMo reference, fp32, chunk 64, k={k}, all-gather {g}: {t * 1e3:.1f} ms per step; payload "
                  f"{opt.bytes_sent / 1e6:.1f} MB (int64 indices + fp32 values)", flush=True)
            out[key[g]].append({"k": k, "step_s": t, "payload_bytes": opt.bytes_sent})
            del opt
            torch.cuda.empty_cache()

    adamw = torch.optim.AdamW(params, lr=4e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    t = timed(adamw.step, args.reps, args.warmup, before=restore)
    print(f"torch AdamW(fused=True), fp32: {t * 1e3:.2f} ms per step", flush=True)
    out["adamw_fused_s"] = t
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
