#!/usr/bin/env python3
"""Training throughput of the same Llama architecture in PyTorch, the baseline for
bench/gpu/gpu_train_bench.cpp: transformers' LlamaForCausalLM with SDPA attention, fp32 master
weights under bf16 autocast, fused AdamW, eager mode. Random tokens, fresh every step; the median
step time after warm-up (CUDA synchronised at both ends of a step); peak memory from
torch.cuda.max_memory_allocated. MFU is (6 * params + 12 * layers * d * seq) flops per token over the
time against --peak-tflops, as in ../shared/reference/gpu-baselines.md.

Usage: llama_torch_train.py [--preset small|1b] [--batch 16] [--micro-batch 0] [--seq 1024]
                            [--steps 6] [--warmup 2] [--json FILE]
"""
import argparse
import json
import statistics
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

PRESETS = {  # the same shapes as libdistro's llama_preset (model/llama.cpp)
    "small": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=2048),
    "1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=8, intermediate_size=8192),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="small", choices=sorted(PRESETS))
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--micro-batch", type=int, default=0)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--peak-tflops", type=float, default=989.0)
    ap.add_argument("--json")
    a = ap.parse_args()
    mb = a.micro_batch or a.batch
    if a.batch % mb:
        ap.error("--micro-batch must divide --batch")

    p = PRESETS[a.preset]
    cfg = LlamaConfig(vocab_size=32000, max_position_embeddings=max(a.seq, 1024), rms_norm_eps=1e-5,
                      num_key_value_heads=p["num_attention_heads"], tie_word_embeddings=False,
                      attention_bias=False, mlp_bias=False, **p)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).cuda()
    params = sum(x.numel() for x in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=4e-4, fused=True)
    gen = torch.Generator(device="cuda").manual_seed(1)
    times = []
    loss = None
    torch.cuda.reset_peak_memory_stats()
    for s in range(a.warmup + a.steps):
        ids = torch.randint(0, 32000, (a.batch, a.seq + 1), device="cuda", generator=gen)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        for m in range(0, a.batch, mb):
            x = ids[m:m + mb, :-1]
            y = ids[m:m + mb, 1:]
            with torch.autocast("cuda", dtype=torch.bfloat16):
                logits = model(input_ids=x).logits
            loss = torch.nn.functional.cross_entropy(logits.float().view(-1, 32000), y.reshape(-1)) * (mb / a.batch)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        if s >= a.warmup:
            times.append(dt)
        print(f"step {s + 1}: {dt * 1e3:.1f} ms, loss {loss.item() * a.batch / mb:.4f}", flush=True)
    step = statistics.median(times)
    tok_s = a.batch * a.seq / step
    flops_per_token = 6 * params + 12 * cfg.num_hidden_layers * cfg.hidden_size * a.seq
    mfu = tok_s * flops_per_token / (a.peak_tflops * 1e12)
    peak = torch.cuda.max_memory_allocated()
    print(f"\npytorch {a.preset}: {params} parameters, batch {a.batch} x {a.seq}, micro-batch {mb}")
    print(f"step (median) {step * 1e3:.1f} ms, {tok_s:.0f} tokens/s, MFU {mfu:.3f}, peak memory {peak / 1e9:.2f} GB")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(preset=a.preset, params=params, batch=a.batch, micro_batch=mb, seq=a.seq,
                           step_ms=step * 1e3, tokens_per_s=tok_s, mfu=mfu, peak_memory_bytes=peak,
                           device=torch.cuda.get_device_name(), torch=torch.__version__), f, indent=2)


if __name__ == "__main__":
    main()
