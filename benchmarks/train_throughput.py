"""SFT throughput with and without packing: tokens/s, model FLOP utilisation, padding.

Rows whose lengths follow the InT targets' spread (lognormal, a few hundred to 16k tokens at
full scale) train side by side in one run, on one model, two ways:

- **unpacked**: today's trainer without packing: ``--unpacked-batch`` rows per micro-batch
  (the paper preset's 1), padded to the longest, the model's default attention (sdpa);
- **packed**: intgen's packed SFT (docs/training.md, "Packing"): rows packed best-fit
  decreasing into sequences of up to ``--max-length`` tokens, one sequence per micro-batch,
  padding-free (position ids restart at each row, no attention mask), with the attention
  implementation intgen picks for packing (flash_attention_2 when flash-attn is installed,
  else intgen's sdpa called once per row) unless ``--attn`` names one (``sdpa``: the dense
  block-diagonal mask; ``flex_attention``: CUDA only).

Both do forward, backward and an AdamW step every ``64 rows`` (on average for packed), as
the paper preset does; a timed pass covers every row once after a short warm-up, and the
two modes alternate ``--repeats`` times (each mode's fastest pass is kept).

MFU = useful FLOPs / time / peak, with useful FLOPs per row of L tokens = 6 x P x L (P: the
weights a token passes through: every matrix except the input embedding, the LM head
counted even when tied) + 6 x layers x heads x head_dim x L^2 (causal attention, forward
and backward). Padding and cross-row attention count as waste. The peak is ``--peak-tflops``
or, on a known GPU, its dense bf16 peak.

Needs torch and transformers only (no TRL, no datasets), so it runs unchanged on a GPU
machine that has just those:

    python benchmarks/train_throughput.py                       # tiny config on the CPU, 1-3 minutes
    python benchmarks/train_throughput.py --config qwen3-4b     # Qwen3-4B shape, random weights (GPU)
    python benchmarks/train_throughput.py --model PATH          # a model folder you name

The last line reads ``packed/unpacked tokens/s: X.XX`` (followed by ``MFU: Y.YY``, the
packed run's, where a peak is known).
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

#: dense bf16 peak TFLOP/s by device name fragment (vendor data sheets, without sparsity)
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "GH200": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0}

#: model shapes buildable from a config alone (no weights)
CONFIGS = {
    # a tiny Qwen3: the CPU smoke configuration
    "tiny": dict(vocab_size=4096, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=32768,
                 tie_word_embeddings=True),
    # Qwen3-4B(-Instruct-2507)'s published shape
    "qwen3-4b": dict(vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                     num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=262144,
                     rope_theta=5_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=True),
}
#: the row-length mix per configuration: the paper's targets at full scale, 1/8 of it for the tiny CPU run
LENGTHS = {"full": dict(max_length=16384, median=3000, sigma=1.0, min_length=300),
           "tiny": dict(max_length=2048, median=375, sigma=1.0, min_length=40)}
ROWS_PER_STEP = 64  # the paper's effective batch


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--config", choices=sorted(CONFIGS), default=None,
                     help="build a random-weight model from this shape (default: tiny on CPU, qwen3-4b on CUDA)")
    src.add_argument("--model", default=None, help="a model folder or intgen short name (its weights are loaded)")
    p.add_argument("--rows", type=int, default=None, help="rows timed per mode (default: 64, one paper step)")
    p.add_argument("--max-length", type=int, default=None, help="tokens per packed sequence and longest row")
    p.add_argument("--median", type=float, default=None, help="median row length (lognormal)")
    p.add_argument("--sigma", type=float, default=None, help="sigma of the row lengths' logarithm")
    p.add_argument("--min-length", type=int, default=None, help="shortest row")
    p.add_argument("--unpacked-batch", type=int, default=1, help="rows per unpacked micro-batch (padded)")
    p.add_argument("--attn", default="auto", help="attention for the packed run (auto: as intgen picks)")
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                   help="auto: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--no-gradient-checkpointing", action="store_true",
                   help="on CUDA gradient checkpointing is on (the paper preset); off on CPU")
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's peak, for MFU")
    p.add_argument("--warmup", type=int, default=2, help="micro-batches per mode before the clock starts")
    p.add_argument("--repeats", type=int, default=2,
                   help="alternate unpacked and packed passes this many times and keep each mode's fastest (a "
                        "shared machine's load drifts between passes)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (default on a CPU: 1, since OpenMP's spinning threads slow a shared machine "
                        "down many times over)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


# --------------------------------------------------------------------------- rows and batches


def sample_lengths(n: int, median: float, sigma: float, lo: int, hi: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [min(hi, max(lo, int(round(rng.lognormvariate(math.log(median), sigma))))) for _ in range(n)]


def make_rows(lengths: list[int], vocab: int, seed: int) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) per row: a prompt (first 30%, label -100) then the target."""
    rng = random.Random(seed + 1)
    rows = []
    for n in lengths:
        ids = [rng.randrange(10, vocab) for _ in range(n)]
        cut = max(1, int(0.3 * n))
        rows.append((ids, [-100] * cut + ids[cut:]))
    return rows


def best_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Row indices per packed sequence: each row, longest first, goes into the fullest
    sequence it fits in (the same packing as TRL's ``bfd`` strategy, which intgen uses)."""
    bins: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        best = min((j for j in range(len(bins)) if free[j] >= lengths[i]), key=lambda j: free[j], default=None)
        if best is None:
            bins.append([i])
            free.append(capacity - lengths[i])
        else:
            bins[best].append(i)
            free[best] -= lengths[i]
    return bins


def packed_batches(rows, capacity: int):
    """Padding-free micro-batches: one row of tokens per packed sequence, position ids
    restarting at each row, each row's first label masked (as TRL's padding-free collator)."""
    out = []
    for members in best_fit_decreasing([len(r[0]) for r in rows], capacity):
        ids, labels, pos = [], [], []
        for i in members:
            r_ids, r_labels = rows[i]
            ids += r_ids
            labels += [-100] + r_labels[1:]
            pos += list(range(len(r_ids)))
        lengths = [len(rows[i][0]) for i in members]
        cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
        out.append(({"input_ids": torch.tensor([ids]), "labels": torch.tensor([labels]),
                     "position_ids": torch.tensor([pos]), "cu_seq_lens_q": cu, "cu_seq_lens_k": cu,
                     "max_length_q": max(lengths), "max_length_k": max(lengths)}, lengths, len(ids)))
    return out


def unpacked_batches(rows, batch: int, pad_id: int = 0):
    """Micro-batches of ``batch`` rows padded on the right to the longest (attention mask)."""
    out = []
    for s in range(0, len(rows), batch):
        group = rows[s:s + batch]
        width = max(len(r[0]) for r in group)
        ids = [r[0] + [pad_id] * (width - len(r[0])) for r in group]
        labels = [r[1] + [-100] * (width - len(r[1])) for r in group]
        mask = [[1] * len(r[0]) + [0] * (width - len(r[0])) for r in group]
        out.append(({"input_ids": torch.tensor(ids), "labels": torch.tensor(labels),
                     "attention_mask": torch.tensor(mask)}, [len(r[0]) for r in group], width * len(group)))
    return out


# --------------------------------------------------------------------------- model and FLOPs


def build_model(args, device, dtype):
    from transformers import AutoModelForCausalLM, Qwen3Config

    if args.model:
        path = args.model
        if not Path(path).exists():
            from intgen.models import materialize  # an intgen short name

            path = materialize(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        name = f"{args.model} (its weights)"
    else:
        config = Qwen3Config(**CONFIGS[args.config])
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        name = f"{args.config} (random weights)"
    return model.to(device), name


def matmul_params(model) -> int:
    """Weights a token passes through: all parameters but the input embedding, plus the LM
    head's matrix when it is tied to the embedding."""
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    total = sum(p.numel() for p in model.parameters())
    tied = head.data_ptr() == emb.data_ptr()
    return total - emb.numel() + (head.numel() if tied else 0)


def useful_flops(lengths: list[int], params: int, config) -> float:
    text = config.get_text_config()
    d_attn = text.num_attention_heads * getattr(text, "head_dim", text.hidden_size // text.num_attention_heads)
    return sum(6.0 * params * n + 6.0 * text.num_hidden_layers * d_attn * n * n for n in lengths)


def set_attention(model, impl: str) -> str:
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(impl)
    else:
        model.config._attn_implementation = impl
    return model.config._attn_implementation


# --------------------------------------------------------------------------- timing


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def run(model, batches, accum: int, device, warmup: int) -> tuple[float, float]:
    """Train over ``batches`` (optimizer step every ``accum`` micro-batches); returns
    (seconds of the timed pass, peak GPU memory in GB or nan)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, **({"fused": True} if device.type == "cuda" else {}))
    model.train()

    def step(batch, n_items):
        inputs = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
        out = model(**inputs, num_items_in_batch=n_items, use_cache=False)
        out.loss.backward()

    for batch, _, _ in batches[:warmup]:
        step(batch, torch.tensor(1.0, device=device))
    opt.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync(device)
    start = time.perf_counter()
    for s in range(0, len(batches), accum):
        window = batches[s:s + accum]
        n_items = torch.tensor(float(sum(int((b["labels"][..., 1:] != -100).sum()) for b, _, _ in window)),
                               device=device)
        for batch, _, _ in window:
            step(batch, n_items)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync(device)
    seconds = time.perf_counter() - start
    mem = torch.cuda.max_memory_allocated() / 1e9 if device.type == "cuda" else float("nan")
    del opt
    return seconds, mem


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.threads or device.type == "cpu":
        torch.set_num_threads(args.threads or 1)
    if args.config is None and args.model is None:
        args.config = "qwen3-4b" if device.type == "cuda" else "tiny"
    scale = "tiny" if args.config == "tiny" else "full"
    for key, value in LENGTHS[scale].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.rows = args.rows or 64
    dtype = {"auto": torch.bfloat16 if device.type == "cuda" else torch.float32, "float32": torch.float32,
             "bfloat16": torch.bfloat16}[args.dtype]

    torch.manual_seed(args.seed)
    model, name = build_model(args, device, dtype)
    if device.type == "cuda" and not args.no_gradient_checkpointing:
        model.gradient_checkpointing_enable()
    params = matmul_params(model)
    vocab = model.config.get_text_config().vocab_size
    lengths = sample_lengths(args.rows, args.median, args.sigma, args.min_length, args.max_length, args.seed)
    rows = make_rows(lengths, vocab, args.seed)
    real_tokens = sum(lengths)
    flops = useful_flops(lengths, params, model.config)

    from intgen.train.packing import choose_attention

    packed_attn = choose_attention(args.attn, packing=True)
    unpacked_attn = model.config._attn_implementation
    gpu = torch.cuda.get_device_name(0) if device.type == "cuda" else None
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if gpu and k in gpu), None)
    srt = sorted(lengths)
    print(f"model: {name}, {params / 1e9:.3g}e9 matmul parameters, {str(dtype).removeprefix('torch.')}, "
          f"{gpu or 'CPU'} ({torch.get_num_threads()} threads), torch {torch.__version__}"
          + (", gradient checkpointing" if model.is_gradient_checkpointing else ""))
    print(f"rows: {args.rows}, lengths lognormal median {args.median:g} sigma {args.sigma:g} in "
          f"[{args.min_length}, {args.max_length}]: mean {real_tokens / args.rows:.0f}, median {srt[len(srt) // 2]}, "
          f"p90 {srt[int(0.9 * (len(srt) - 1))]}, max {srt[-1]}; {real_tokens} tokens")

    results = {}
    unpacked = unpacked_batches(rows, args.unpacked_batch)
    accum_u = max(1, round(ROWS_PER_STEP / args.unpacked_batch))
    packed = packed_batches(rows, args.max_length)
    rows_per_seq = args.rows / len(packed)
    accum_p = max(1, round(ROWS_PER_STEP / rows_per_seq))
    timings: dict[str, list[tuple[float, float]]] = {"unpacked": [], "packed": []}
    for _ in range(max(1, args.repeats)):  # alternating, so both modes see the same drift in the machine's load
        set_attention(model, unpacked_attn)
        timings["unpacked"].append(run(model, unpacked, accum_u, device, args.warmup))
        packed_attn = set_attention(model, packed_attn)
        timings["packed"].append(run(model, packed, accum_p, device, args.warmup))
    passes = {k: ", ".join(f"{t:.1f}" for t, _ in v) for k, v in timings.items()}

    seconds, mem = min(timings["unpacked"])
    pad_u = 1 - real_tokens / sum(b[2] for b in unpacked)
    results["unpacked"] = real_tokens / seconds
    mfu_u = flops / seconds / (peak * 1e12) if peak else None
    print(f"unpacked: {args.unpacked_batch} row(s) per micro-batch, attention {unpacked_attn}, {accum_u} "
          f"accumulation steps: {seconds:.1f} s (passes: {passes['unpacked']} s), {results['unpacked']:.0f} "
          f"tokens/s, padding {pad_u:.1%}"
          + (f", MFU {mfu_u:.3f}" if mfu_u is not None else "")
          + (f", peak memory {mem:.1f} GB" if mem == mem else ""))

    seconds, mem = min(timings["packed"])
    results["packed"] = real_tokens / seconds
    mfu_p = flops / seconds / (peak * 1e12) if peak else None
    fill = real_tokens / (len(packed) * args.max_length)
    print(f"packed: {len(packed)} sequences of up to {args.max_length} tokens ({rows_per_seq:.1f} rows each, "
          f"{fill:.0%} full), attention {packed_attn}, {accum_p} accumulation steps "
          f"({rows_per_seq * accum_p:.0f} rows per optimizer step on average): {seconds:.1f} s (passes: "
          f"{passes['packed']} s), {results['packed']:.0f} tokens/s, padding 0.0%"
          + (f", MFU {mfu_p:.3f}" if mfu_p is not None else "")
          + (f", peak memory {mem:.1f} GB" if mem == mem else ""))
    print(f"packed/unpacked tokens/s: {results['packed'] / results['unpacked']:.2f}"
          + (f"  MFU: {mfu_p:.2f}" if mfu_p is not None else ""))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
