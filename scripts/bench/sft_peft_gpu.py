#!/usr/bin/env python3
"""The PyTorch + PEFT peer of tunelab's GPU training benchmark (scripts/gpu-check.sh): a model of
SmolLM2-135M's shape, LoRA on every linear layer, one fixed random batch with the first 40% of
each row masked as prompt (label -100), AdamW; warm-up steps, then timed steps. Prints one JSON
line to stdout; everything else goes to stderr.

Set up as LLaMA-Factory trains on a GPU with `bf16: true`: base weights in bf16, LoRA weights and
optimizer state in f32 (LLaMA-Factory upcasts trainable parameters), the step under
torch.autocast(bf16), SDPA attention. The weights are random (seeded): the GPU machine has no
GGUF reader for Python, and a step's speed does not depend on the weights' values.

usage: sft_peft_gpu.py [--batch 8] [--seq 512] [--rank 8] [--alpha 16] [--steps 10]
                       [--warmup 3] [--seed 0] [--device cuda]
"""
import argparse
import json
import statistics
import sys
import time

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# SmolLM2-135M-Instruct's config.json (the same numbers its GGUF carries).
SMOLLM2 = dict(
    vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
    num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
    rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True, hidden_act="silu",
)


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--alpha", type=float, default=16)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda")
    args = p.parse_args()

    import torch
    try:
        import peft
        import transformers
        from transformers import LlamaConfig, LlamaForCausalLM
    except ImportError as e:
        log(f"sft_peft_gpu: {e}; the peer needs transformers and peft beside torch")
        return 3
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        log("sft_peft_gpu: torch sees no CUDA device")
        return 3

    torch.manual_seed(args.seed)
    config = LlamaConfig(**SMOLLM2, attn_implementation="sdpa")
    model = LlamaForCausalLM(config).to(device=args.device, dtype=torch.bfloat16)
    lora = peft.LoraConfig(r=args.rank, lora_alpha=args.alpha, lora_dropout=0.0,
                           target_modules=TARGETS, task_type="CAUSAL_LM")
    model = peft.get_peft_model(model, lora)
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p_ in trainable:
        p_.data = p_.data.float()
    model.train()
    optim = torch.optim.AdamW(trainable, lr=1e-4)

    g = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(0, SMOLLM2["vocab_size"], (args.batch, args.seq), generator=g)
    labels = ids.clone()
    labels[:, : args.seq * 2 // 5] = -100
    ids, labels = ids.to(args.device), labels.to(args.device)

    kind = args.device.split(":")[0]
    sync = torch.cuda.synchronize if kind == "cuda" else (lambda: None)

    def step():
        with torch.autocast(device_type=kind, dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        optim.step()
        optim.zero_grad(set_to_none=True)
        return loss

    losses, times = [], []
    for i in range(args.warmup + args.steps):
        sync()
        t0 = time.perf_counter()
        loss = step()
        sync()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
        losses.append(loss.item())
    med = statistics.median(times)
    print(json.dumps({
        "impl": f"torch {torch.__version__} + transformers {transformers.__version__} + peft {peft.__version__}",
        "device": torch.cuda.get_device_name(0) if kind == "cuda" else args.device, "dtype": "bf16 (autocast), LoRA f32",
        "batch": args.batch, "seq": args.seq, "rank": args.rank, "targets": "all",
        "tokens_per_s": round(args.batch * args.seq / med), "step_s": round(med, 4),
        "loss_first": round(losses[0], 4), "loss_last": round(losses[-1], 4),
        "trainable_params": sum(p_.numel() for p_ in trainable),
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
