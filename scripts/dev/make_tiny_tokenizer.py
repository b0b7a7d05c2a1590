#!/usr/bin/env python3
"""Train the `tiny` preset's tokenizer: a byte-level BPE (GPT-2 style, no prefix space) with 1024
tokens, learned from the shipped data in data/, plus the ChatML special tokens. Writes
src/model/tiny_tokenizer.json, which is compiled into the binary.

Run from the repository root:  python3 scripts/dev/make_tiny_tokenizer.py   (pip install tokenizers)
"""
import glob
import json

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def texts():
    for path in sorted(glob.glob("data/*.json")):
        if path.endswith("dataset_info.json"):
            continue
        for rec in json.load(open(path, encoding="utf-8")):
            for value in rec.values():
                if isinstance(value, str):
                    yield value
                elif isinstance(value, list):
                    for m in value:
                        if isinstance(m, dict):
                            yield m.get("value", "")


def main():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts()), trainer)
    tok.save("src/model/tiny_tokenizer.json")
    print("vocab", tok.get_vocab_size(), "ids", [tok.token_to_id(s) for s in SPECIALS])


if __name__ == "__main__":
    main()
