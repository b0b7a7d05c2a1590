"""Second half of tests/peers/export_check.sh: transformers and PEFT read tunelab's exports.

Reads OUT/tunelab.json (tunelab's greedy answers) and checks, with transformers + PEFT:
  1. base-hf/ (SmolLM2 written by save_hf) + peft/ (tunelab's adapter) via PeftModel gives
     tunelab's tuned answer;
  2. merged-hf/ (save_hf with the adapter merged) gives the same answer, and its last-position
     logits equal PEFT's (base + adapter) to float precision.
Prints one JSON line; exits 1 on a mismatch.
"""
import json
import sys

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

out = sys.argv[1]
want = json.load(open(f"{out}/tunelab.json"))
torch.manual_seed(0)


def answer(model, tok):
    ids = tok(want["prompt"], return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad():
        gen = model.generate(ids, max_new_tokens=24, do_sample=False)
        logits = model(ids).logits[0, -1]
    text = tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True)
    return text.strip(), logits


tok = AutoTokenizer.from_pretrained(f"{out}/base-hf")
base = AutoModelForCausalLM.from_pretrained(f"{out}/base-hf", torch_dtype=torch.float32)
base_text, _ = answer(base, tok)
peft_model = PeftModel.from_pretrained(base, f"{out}/peft")
peft_text, peft_logits = answer(peft_model, tok)
merged = AutoModelForCausalLM.from_pretrained(f"{out}/merged-hf", torch_dtype=torch.float32)
merged_text, merged_logits = answer(merged, AutoTokenizer.from_pretrained(f"{out}/merged-hf"))
diff = (peft_logits - merged_logits).abs().max().item()
ok = {
    "adapter_changed_the_answer": want["tuned"] != want["base"],
    "base": base_text == want["base"].strip(),
    "peft": peft_text == want["tuned"].strip(),
    "merged": merged_text == want["tuned"].strip(),
    "merged_logits": diff < 1e-3,
}
print(json.dumps({
    "tunelab_base": want["base"], "transformers_base": base_text,
    "tunelab_tuned": want["tuned"], "peft_tuned": peft_text, "transformers_merged": merged_text,
    "max_abs_logit_diff_peft_vs_merged": diff, "ok": ok,
}, ensure_ascii=False))
sys.exit(0 if all(ok.values()) else 1)
