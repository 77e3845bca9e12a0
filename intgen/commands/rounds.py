"""``intgen rounds``: repeated InT rounds, generate -> fine-tune -> generate on the new
policy's failures (:mod:`intgen.rounds`, docs/rounds.md)."""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
from pathlib import Path


def _terminate(signum, frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _command(args: argparse.Namespace, out: Path) -> str:
    parts = ["intgen rounds", shlex.quote(args.job), "--rounds", str(args.rounds), "--out", shlex.quote(str(out))]
    if args.limit is not None:
        parts += ["--limit", str(args.limit)]
    if args.preset:
        parts += ["--preset", args.preset]
    parts += [f"--train {shlex.quote(t)}" for t in args.train]
    return " ".join(parts + [shlex.quote(o) for o in args.overrides])


def run(args: argparse.Namespace) -> int:
    """Run or resume a rounds job. Exit 0 when it ended normally (all rounds, or a round
    with no SFT rows); 2 for a bad spec, setting or folder; otherwise the failed step's
    status (3: a round finished with failed requests), 130 when stopped."""
    from intgen.config import SpecError, load_spec
    from intgen.resources import job_spec
    from intgen.rounds import RoundsError, RoundsJob, funnel_table, run_rounds
    from intgen.rundir import RunDirError

    overrides = list(args.overrides)
    try:
        job = job_spec(args.job)
        spec = load_spec(job, overrides + ([f"limit={args.limit}"] if args.limit is not None else []))
    except (SpecError, FileNotFoundError) as e:
        print(f"intgen rounds: {e}", file=sys.stderr)
        return 2
    lora = [t for t in args.train if t.split("=", 1)[0].split(".", 1)[0] == "lora"]
    if lora:
        print(f"intgen rounds: --train {lora[0]}: LoRA is not offered, the next round's engine loads the "
              "checkpoint as a full model (docs/rounds.md)", file=sys.stderr)
        return 2
    if any(c in str(args.out or "") for c in "[]*?"):
        print(f"intgen rounds: --out {args.out}: a folder name with [ ] * or ? is read as a file pattern when "
              "the round's rows are loaded for training; choose another name", file=sys.stderr)
        return 2
    preset = args.preset
    if args.rounds > 1 or args.preset or args.train:  # checked before round 1's hours of generation
        try:
            from intgen.train.configs import ConfigError, default_preset, resolve
        except ImportError as e:
            print(f"intgen rounds: more than one round trains with TRL, which is not installed ({e}); "
                  "pip install 'intgen[train]'", file=sys.stderr)
            return 2
        # every round's checkpoint trains with the preset the spec's model would get (a checkpoint
        # is a local folder, which would otherwise get the paper preset)
        preset = preset or default_preset(spec.model)
        try:
            resolve("sft", preset, list(args.train))
        except ConfigError as e:
            print(f"intgen rounds: training settings (--preset, --train): {e}", file=sys.stderr)
            return 2
    # absolute: each round's spec names the previous checkpoint by path, and a resume from another
    # folder (or with --out spelled differently) must name the same one
    out = (Path(args.out) if args.out else Path("runs") / f"{spec.name}-rounds").expanduser().resolve()
    rounds = RoundsJob(job=job.resolve(), out=out, rounds=args.rounds, overrides=overrides, seed=spec.seed,
                       model=spec.model, train_preset=preset, train_overrides=list(args.train), limit=args.limit,
                       quiet=args.quiet)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        result = run_rounds(rounds)
    except (RoundsError, RunDirError, FileExistsError, NotADirectoryError) as e:
        print(f"intgen rounds: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"intgen rounds: {type(e).__name__}: {e}; fix the cause, then rerun: {_command(args, out)}",
              file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    record = result.record
    print(f"\nrounds folder: {out} ({out / 'rounds.json'})")
    if record["rounds"]:
        print(funnel_table(record))
    print(f"ended by {result.ended_by}: {record['ending']}")
    if record["status"] != "complete":
        print(f"resume with: {_command(args, out)}", file=sys.stderr)
    elif record["rounds"] and record["rounds"][-1].get("sft_rows"):
        last = record["rounds"][-1]
        print(f"the last round's SFT rows train the next policy with: intgen train sft --data "
              f"{shlex.quote(str(out / last['run_dir']))} --model {shlex.quote(last['policy'])}" + (f" --preset {preset}" if preset else "")
              + "".join(f" {shlex.quote(t)}" for t in args.train))
    return result.exit_status


def register(sub) -> None:
    p = sub.add_parser("rounds", help="repeated InT rounds: generate, fine-tune on the SFT rows, generate again on "
                                      "the new policy's failures (docs/rounds.md)")
    p.add_argument("job", help="the job spec (a YAML file or a bundled spec's name, e.g. rounds)")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides of the job spec, for every round")
    p.add_argument("--rounds", type=int, required=True, metavar="N", help="rounds at most (N - 1 fine-tunings)")
    p.add_argument("--out", help="the rounds folder (default: runs/<name>-rounds); an existing one is resumed")
    p.add_argument("--limit", type=int, help="number of problems in every round (overrides the spec's limit)")
    p.add_argument("--preset", default=None, help="intgen train sft's preset for every fine-tuning (default: the "
                                                  "spec model's: cpu for smollm2-135m-instruct, else paper)")
    p.add_argument("--train", action="append", default=[], metavar="KEY=VALUE",
                   help="an intgen train sft override (repeatable), e.g. --train max_steps=20")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)
