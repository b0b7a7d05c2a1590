"""The PyTorch half of scripts/gpu/bench-8b.sh: Llama-3-8B's exact shape with random weights in
bf16 on the GPU (transformers' LlamaForCausalLM from the config, SDPA attention), PEFT LoRA rank 16
on every linear layer in f32, batch × seq random tokens with the first 40% masked, AdamW; prints
one `BENCH8B {json}` line with tokens/s, the step time and peak GPU memory (the caching allocator's
peak of live tensors, and of what it reserved: tunelab reports its memory pool's two peaks).

    python bench_8b_peft.py [--seq 1024] [--batch 4] [--steps 5] [--layers 32] [--checkpointing]
"""
import argparse
import json
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

p = argparse.ArgumentParser()
p.add_argument("--seq", type=int, default=1024)
p.add_argument("--batch", type=int, default=4)
p.add_argument("--steps", type=int, default=5)
p.add_argument("--layers", type=int, default=32)
p.add_argument("--checkpointing", action="store_true", help="gradient checkpointing (non-reentrant)")
a = p.parse_args()

cfg = LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                  num_hidden_layers=a.layers, num_attention_heads=32, num_key_value_heads=8,
                  head_dim=128, rms_norm_eps=1e-5, rope_theta=500000.0,
                  max_position_embeddings=8192, tie_word_embeddings=False,
                  attn_implementation="sdpa", torch_dtype=torch.bfloat16)
torch.manual_seed(1)
with torch.device("cuda"):
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear"))
if a.checkpointing:
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
for n, prm in model.named_parameters():
    if prm.requires_grad:
        prm.data = prm.data.float()
opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-4)
ids = torch.randint(0, cfg.vocab_size, (a.batch, a.seq), device="cuda")
labels = ids.clone()
labels[:, : a.seq * 2 // 5] = -100
torch.cuda.reset_peak_memory_stats()
times, losses = [], []
for step in range(a.steps + 1):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(input_ids=ids, labels=labels).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    if step > 0:  # the first step warms up
        times.append(time.perf_counter() - t0)
        losses.append(loss.item())
times.sort()
median = times[len(times) // 2]
n_params = sum(q.numel() for q in model.parameters())
tps = a.batch * a.seq / median
print("BENCH8B " + json.dumps({
    "impl": f"torch {torch.__version__} + peft", "base": "bf16", "layers": a.layers, "batch": a.batch,
    "seq": a.seq, "rank": 16, "checkpointing": a.checkpointing, "tokens_per_s": tps, "step_s": median,
    "mfu": 6.0 * n_params * tps / 989e12, "losses": losses,
    "gpu_peak_mb": torch.cuda.max_memory_allocated() / 1e6,
    "gpu_reserved_mb": torch.cuda.max_memory_reserved() / 1e6,
}))
