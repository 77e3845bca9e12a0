"""Load intgen's ``rl`` view with verl's own dataset class; write what verl made of it as JSON.

Run by tests/test_consumers.py inside the verl environment that
tests/consumers/setup_consumers.sh builds (intgen itself is not importable there)::

    python load_verl.py EXPORT_DIR TOKENIZER_DIR CACHE_DIR OUT_JSON

Writes one JSON object (verl prints to stdout itself): verl's version, the rows
RLHFDataset kept after its prompt-length filter (a prompt its tokenizer cannot template counts as too long and is dropped), and for
each item the fields verl's trainer reads (``raw_prompt``, ``data_source``,
``reward_model``, ``index`` from ``extra_info``), the prompt's token ids as verl computes
them (``apply_chat_template`` + ``normalize_token_ids``), and verl's math-verify score of
a right and a wrong boxed answer against the row's ground truth, and what verl's default
reward routing (``default_compute_score``, keyed by ``data_source``) does with the row.
"""

import glob
import json
import os
import sys

from omegaconf import OmegaConf
from transformers import AutoTokenizer

import verl
from verl.utils.dataset.rl_dataset import RLHFDataset, collate_fn
from verl.utils.reward_score import default_compute_score
from verl.utils.reward_score import math_verify as verl_math_verify
from verl.utils.tokenizer import normalize_token_ids


def _default_reward(data_source: str, solution: str, ground_truth: str) -> str:
    """What verl's default reward routing (no ``custom_reward_function``) does with the row."""
    try:
        return f"score {default_compute_score(data_source, solution, ground_truth)}"
    except NotImplementedError as e:
        return f"NotImplementedError: {e}"


def main(export_dir: str, tokenizer_dir: str, cache_dir: str, out_json: str) -> None:
    files = sorted(glob.glob(os.path.join(export_dir, "rl", "*.parquet")))
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = OmegaConf.create({"prompt_key": "prompt", "max_prompt_length": 1024, "filter_overlong_prompts": True,
                               "filter_overlong_prompts_workers": 1, "truncation": "error", "cache_dir": cache_dir})
    dataset = RLHFDataset(data_files=files, tokenizer=tokenizer, config=config)
    items = [dataset[i] for i in range(len(dataset))]
    batch = collate_fn(items)  # what verl's dataloader does with a batch of items
    out = []
    for item in items:
        ids = normalize_token_ids(tokenizer.apply_chat_template(item["raw_prompt"], add_generation_prompt=True,
                                                                tokenize=True))
        gt = item["reward_model"]["ground_truth"]
        out.append({
            "raw_prompt": item["raw_prompt"], "data_source": item["data_source"], "ability": item["ability"],
            "reward_model": item["reward_model"], "index": item["index"], "extra_info": item["extra_info"],
            "input_ids": ids, "prompt_text": tokenizer.decode(ids),
            "score_right": verl_math_verify.compute_score(f"So the answer is $\\boxed{{{gt}}}$.", gt),
            "score_wrong": verl_math_verify.compute_score("So the answer is $\\boxed{7}$.", gt),
            "default_reward": _default_reward(item["data_source"], f"So the answer is $\\boxed{{{gt}}}$.", gt),
        })
    with open(out_json, "w", encoding="utf-8") as f:
        json.dump({"verl": verl.__version__, "files": files, "rows": len(dataset), "batch_keys": sorted(batch),
                   "items": out}, f)


if __name__ == "__main__":
    main(*sys.argv[1:5])
