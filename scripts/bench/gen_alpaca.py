#!/usr/bin/env python3
"""Write N synthetic alpaca records as JSON Lines (deterministic), for scripts/bench/data_load.sh.

usage: gen_alpaca.py OUT.jsonl [N=1000000]
Records vary in length (20-600 characters of output), a third have an `input`, some are Chinese.
"""
import json
import random
import sys

WORDS = ("model data train loss learning rate adapter token batch epoch gradient layer weight "
         "quantize export serve chat prompt answer question result value").split()
HANZI = "数据模型训练损失学习率适配器批次梯度层权重量化导出服务对话问题答案结果"


def text(rng, lo, hi, zh):
    n = rng.randint(lo, hi)
    if zh:
        return "".join(rng.choice(HANZI) for _ in range(n // 2))
    out = []
    while sum(len(w) + 1 for w in out) < n:
        out.append(rng.choice(WORDS))
    return " ".join(out)


def main():
    path = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 1_000_000
    rng = random.Random(1234)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            zh = i % 5 == 0
            rec = {
                "instruction": text(rng, 10, 120, zh),
                "input": text(rng, 10, 200, zh) if i % 3 == 0 else "",
                "output": text(rng, 20, 600, zh),
            }
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
