#!/usr/bin/env python3
"""The PyTorch peer of tunelab's LoRA training benchmark: SmolLM2-135M (from the GGUF, dequantized
to float32) wrapped with PEFT LoRA, trained on a fixed random batch with prompt masking, on CPU.
Prints one JSON line to stdout; everything else goes to stderr.

The first run converts the GGUF to a Hugging Face model and caches it in --cache-dir.

usage (with the peers venv, e.g. ~/.cache/tunelab/peers/bin/python):
    sft_peft.py --gguf ~/.cache/tunelab/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
        [--batch 4] [--seq 256] [--rank 8] [--alpha 16] [--targets q_proj,v_proj|all] \
        [--steps 3] [--threads 2] [--seed 0] [--cache-dir DIR]
"""
import argparse
import json
import os
import resource
import statistics
import sys
import time

ALL_TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
VOCAB = 49152


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def load_model(gguf, cache_dir):
    import torch
    from transformers import AutoModelForCausalLM

    if not os.path.exists(os.path.join(cache_dir, "config.json")):
        t0 = time.perf_counter()
        gguf = os.path.expanduser(gguf)
        model = AutoModelForCausalLM.from_pretrained(
            os.path.dirname(gguf), gguf_file=os.path.basename(gguf), dtype=torch.float32)
        model.save_pretrained(cache_dir)
        log(f"converted {gguf} -> {cache_dir} in {time.perf_counter() - t0:.1f}s")
    return AutoModelForCausalLM.from_pretrained(cache_dir, dtype=torch.float32)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gguf", required=True)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--alpha", type=float, default=16)
    p.add_argument("--targets", default="q_proj,v_proj")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", default="~/.cache/tunelab/bench/smollm2-hf")
    args = p.parse_args()
    targets = ALL_TARGETS if args.targets == "all" else args.targets

    import torch
    import peft

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = load_model(args.gguf, os.path.expanduser(args.cache_dir))
    config = peft.LoraConfig(r=args.rank, lora_alpha=args.alpha, lora_dropout=0.0,
                             target_modules=targets.split(","), task_type="CAUSAL_LM")
    model = peft.get_peft_model(model, config)
    model.train()
    params = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)

    gen = torch.Generator().manual_seed(args.seed)
    input_ids = torch.randint(0, VOCAB, (args.batch, args.seq), generator=gen)
    labels = input_ids.clone()
    labels[:, : int(args.seq * 0.4)] = -100  # prompt masking
    attention_mask = torch.ones_like(input_ids)

    wall, cpu, losses = [], [], []
    for step in range(args.steps + 1):  # step 0 is the warm-up
        w0, c0 = time.perf_counter(), time.process_time()
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        w, c = time.perf_counter() - w0, time.process_time() - c0
        log(f"step {step}{' (warm-up)' if step == 0 else ''}: loss {loss.item():.4f} {w:.2f}s")
        if step > 0:
            wall.append(w)
            cpu.append(c)
            losses.append(loss.item())

    median = statistics.median(wall)
    print(json.dumps({
        "bench": "sft", "impl": "pytorch+peft", "torch": torch.__version__,
        "peft": peft.__version__, "threads": args.threads, "batch": args.batch, "seq": args.seq,
        "rank": args.rank, "targets": args.targets, "steps": args.steps,
        "step_s_median": round(median, 4), "step_s_all": [round(x, 4) for x in wall],
        "cpu_s_per_step": round(statistics.mean(cpu), 4),
        "tokens_per_s": round(args.batch * args.seq / median, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "loss_first": round(losses[0], 4), "loss_last": round(losses[-1], 4),
        "trainable_params": sum(q.numel() for q in params),
    }))


if __name__ == "__main__":
    main()
