"""Load intgen's ``llamafactory`` view with LLaMA-Factory's own data pipeline, through the
``dataset_info.json`` that intgen wrote; write what LLaMA-Factory made of it as JSON.

Run by tests/test_consumers.py inside the LLaMA-Factory environment that
tests/consumers/setup_consumers.sh builds (intgen itself is not importable there)::

    python load_llamafactory.py EXPORT_DIR DATASET_NAME MODEL_DIR WORK_DIR OUT_JSON

The steps are those of ``llamafactory-cli train`` with ``stage: sft``
(``llamafactory.train.sft.workflow.run_sft``): its argument parser (``get_train_args``),
tokenizer and template, then ``get_dataset``, with ``dataset_dir`` = the export folder. It
runs twice: with LLaMA-Factory's stock ``smollm2`` template, and with ``smollm2_noeos``,
registered here as the dataset card tells users to register one (the stock template's
formatters, the assistant's being the content alone). The JSON holds LLaMA-Factory's
version, the rows after its alpaca converter (``_prompt``, ``_response``, ``_system``)
and, per template, the tokenized SFT examples (``input_ids``, and the ``labels`` decoded).
"""

import json
import sys


def register_noeos_template() -> None:
    """The dataset card's recipe for SmolLM2: its chat format, the assistant turn left open."""
    from llamafactory.data.formatter import StringFormatter
    from llamafactory.data.template import register_template

    register_template(
        name="smollm2_noeos",
        format_user=StringFormatter(slots=["<|im_start|>user\n{{content}}<|im_end|>\n<|im_start|>assistant\n"]),
        format_assistant=StringFormatter(slots=["{{content}}"]),
        format_system=StringFormatter(slots=["<|im_start|>system\n{{content}}<|im_end|>\n"]),
        stop_words=["<|im_end|>"],
        default_system="You are a helpful AI assistant named SmolLM, trained by Hugging Face.",
    )


def main(export_dir: str, dataset: str, model_dir: str, work_dir: str, out_json: str) -> None:
    import llamafactory
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.data.loader import _get_merged_dataset
    from llamafactory.extras.constants import IGNORE_INDEX
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    register_noeos_template()
    out = {"llamafactory": llamafactory.__version__, "examples": {}}
    for template_name in ("smollm2", "smollm2_noeos"):
        model_args, data_args, training_args, _, _ = get_train_args({
            "stage": "sft", "do_train": True, "model_name_or_path": model_dir, "finetuning_type": "full",
            "dataset": dataset, "dataset_dir": export_dir, "template": template_name, "cutoff_len": 2048,
            "overwrite_cache": True, "output_dir": work_dir, "report_to": "none", "use_cpu": True,
        })
        if "converted" not in out:  # the rows as the alpaca converter reads them, before any template
            converted = _get_merged_dataset(data_args.dataset, model_args, data_args, training_args, "sft")
            out["converted"] = [{k: r[k] for k in ("_prompt", "_response", "_system")} for r in converted]
        tokenizer_module = load_tokenizer(model_args)
        tokenizer = tokenizer_module["tokenizer"]
        template = get_template_and_fix_tokenizer(tokenizer, data_args)
        module = get_dataset(template, model_args, data_args, training_args, stage="sft", **tokenizer_module)
        out["examples"][template_name] = [{
            "input_ids": ex["input_ids"], "text": tokenizer.decode(ex["input_ids"]),
            "target": tokenizer.decode([t for t in ex["labels"] if t != IGNORE_INDEX]),
            "last_label": [t for t in ex["labels"] if t != IGNORE_INDEX][-1],
        } for ex in module["train_dataset"]]
    with open(out_json, "w", encoding="utf-8") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main(*sys.argv[1:6])
