#!/usr/bin/env python3
"""The Hugging Face side of scripts/bench/data_load.sh: what LLaMA-Factory does to load an alpaca
JSON Lines file (datasets' json builder) and convert it (the alpaca converter's messages), timed
from a cold cache. Prints one JSON line.

usage: data_load_hf.py FILE.jsonl
"""
import json
import resource
import sys
import tempfile
import time


def convert(example):
    # LLaMA-Factory's AlpacaDatasetConverter for the default columns (no history/system/tools).
    query = [q for q in (example["instruction"], example["input"]) if q]
    return {
        "_prompt": [{"role": "user", "content": "\n".join(query)}],
        "_response": [{"role": "assistant", "content": example["output"]}]
        if isinstance(example["output"], str) else [],
        "_system": "",
        "_tools": "",
    }


def main():
    path = sys.argv[1]
    import datasets
    datasets.disable_progress_bars()
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        ds = datasets.load_dataset("json", data_files=[path], split="train", cache_dir=cache)
        ds = ds.map(convert, remove_columns=ds.column_names, load_from_cache_file=False)
        seconds = time.perf_counter() - start
        records = len(ds)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({
        "bench": "data_load", "tool": f"datasets {datasets.__version__}", "records": records,
        "seconds": round(seconds, 3), "records_per_s": round(records / seconds),
        "peak_rss_mb": round(peak / 2**20, 1),
    }))


if __name__ == "__main__":
    main()
