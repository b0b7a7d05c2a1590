#!/usr/bin/env python3
"""The PyTorch peer of tunelab's LoRA training benchmark: SmolLM2-135M (a Hugging Face folder in
float32) wrapped with PEFT LoRA, trained on a fixed random batch with prompt masking, on CPU.
Prints one JSON line to stdout; everything else goes to stderr.

The folder is tunelab's f32 export of the GGUF (scripts/bench/sft.sh writes it once with
scripts/bench/hf_folder.rhai), so both sides start from the same weights and the peer does not
depend on transformers' GGUF loader (transformers 5.24's save_pretrained refuses a model loaded
from a GGUF).

usage (with the peers venv from scripts/bench/setup-peers.sh):
    sft_peft.py --hf ~/.cache/tunelab/bench/smollm2-hf \
        [--batch 4] [--seq 256] [--rank 8] [--alpha 16] [--targets q_proj,v_proj|all] \
        [--steps 3] [--threads 2] [--seed 0] [--bf16]
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


def load_model(hf_dir):
    import torch
    from transformers import AutoModelForCausalLM

    if not os.path.exists(os.path.join(hf_dir, "config.json")):
        sys.exit(f"{hf_dir}: no config.json; write the folder with "
                 "tunelab run scripts/bench/hf_folder.rhai -- model=PATH.gguf out={hf_dir}")
    return AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hf", required=True, help="a Hugging Face folder (float32)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--alpha", type=float, default=16)
    p.add_argument("--targets", default="q_proj,v_proj")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpointing", action="store_true",
                   help="gradient checkpointing (transformers' gradient_checkpointing_enable, "
                        "non-reentrant): recompute each block in the backward pass")
    p.add_argument("--bf16", action="store_true",
                   help="bf16 autocast on the CPU, as transformers' bf16=True trains: weights, "
                        "LoRA factors and optimizer stay f32, products run in bf16")
    args = p.parse_args()
    targets = ALL_TARGETS if args.targets == "all" else args.targets

    import torch
    import peft

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = load_model(os.path.expanduser(args.hf))
    config = peft.LoraConfig(r=args.rank, lora_alpha=args.alpha, lora_dropout=0.0,
                             target_modules=targets.split(","), task_type="CAUSAL_LM")
    model = peft.get_peft_model(model, config)
    if args.checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
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
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
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
        "dtype": "bf16 autocast" if args.bf16 else "f32", "checkpointing": args.checkpointing,
        "step_s_median": round(median, 4), "step_s_all": [round(x, 4) for x in wall],
        "cpu_s_per_step": round(statistics.mean(cpu), 4),
        "tokens_per_s": round(args.batch * args.seq / median, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "loss_first": round(losses[0], 4), "loss_last": round(losses[-1], 4),
        "trainable_params": sum(q.numel() for q in params),
    }))


if __name__ == "__main__":
    main()
