"""`python -m llm_runs data sciknoweval --out DIR [--domains ...] [--source DIR]`,
`python -m llm_runs train --config PATH [key=value ...] | --resume RUN_DIR`,
`python -m llm_runs eval --checkpoint DIR [--data FILE] [--engine hf|vllm] [key=value ...]` and
`python -m llm_runs bench --config PATH [--peer trl] [--steps K] [--repeats R]`, `python -m llm_runs bench-loss [--lengths ...]`,
`python -m llm_runs warm-start --config PATH --out DIR [key=value ...]`, `python -m llm_runs demo [--quick]`,
`python -m llm_runs study [--quick] [--jobs N] [--seeds K] [--out DIR] [--report PATH] [--replot]` and
`python -m llm_runs compare RUN_DIR... [--figure PATH] [--json PATH]` (runs grouped by domain × method, beside the paper)."""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from pathlib import Path

from llm_runs.checkpoint import StorageError
from llm_runs.config import ConfigError, load
from llm_runs.data import DataError
from llm_runs.preemption import PREEMPTED, Preempted
from llm_runs.experiment import config as _experiment_sections  # noqa: F401  registers `warm_start:` for every command


def _quiet_loading(args) -> None:
    """No transformers progress bars (weights loaded, shards written) where ours are off: they fill a batch
    job's log with carriage-return lines."""
    if args.no_progress or not sys.stderr.isatty():
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def _train(args) -> int:
    from llm_runs import lifecycle
    from llm_runs.build import run_name

    _quiet_loading(args)
    if args.resume and args.config:
        raise ConfigError(f"--resume {args.resume} reads the run's own config.yaml: --config {args.config} would be "
                          f"ignored; drop it (a resume may change some settings as section.key=value)")
    # rank 0 checks and holds the folder for the job (under torchrun the other ranks may find it started
    # already); a RANK left in the environment of a single process does not count
    lead = int(os.environ.get("WORLD_SIZE", "1")) == 1 or os.environ.get("RANK", "0") == "0"
    progress = not args.no_progress
    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "config.yaml").exists():
            raise ConfigError(f"--resume {run_dir}: no config.yaml there (not a run folder)")
        code = lifecycle.start(run_dir, resume_overrides=args.overrides, progress=progress, lead=lead)
    else:
        if args.config is None:
            raise ConfigError("train needs --config PATH (or --resume RUN_DIR)")
        config = load(args.config, args.overrides)
        run_dir = Path(config.train.output_dir) / run_name(config, args.config)
        code = lifecycle.start(run_dir, config, progress=progress, lead=lead)
    if code == 0:
        print(f"run folder: {run_dir}  (metrics: {run_dir / 'metrics.jsonl'})")
    return code


def _eval(args) -> int:
    import torch

    from llm_runs.data import load_split
    from llm_runs.evaluate import evaluate
    from llm_runs.build import DTYPES, build_vllm_engine, load_model, resolve_device, seed_everything

    from llm_runs import model_files

    _quiet_loading(args)
    checkpoint = Path(args.checkpoint)
    spec = model_files.check_folder(checkpoint, "--checkpoint")  # a clear error before anything is loaded
    out = Path(args.out) if args.out else checkpoint / "eval.json"
    try:  # where the result goes is made (or refused) now, not after an evaluation of hours
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"--out {out}: its folder cannot be made ({err.strerror})") from None
    model_files.check_tokenizer(checkpoint, "--checkpoint")
    # the run's config: RUN/final (an export) or RUN/checkpoints/step-N
    run_config = next((p / "config.yaml" for p in (checkpoint.parent, checkpoint.parent.parent)
                       if (p / "config.yaml").exists()), None)
    config = load(run_config, args.overrides)
    if args.dtype:
        config.model.dtype = args.dtype
    seed_everything(config.train.seed)
    device = resolve_device(config.train.device)
    examples = load_split(args.data or config.data.test)
    # a replay run sampled nothing during training: its checkpoints are sampled with hf
    engine_name = args.engine or ("hf" if config.rollout.engine == "replay" else config.rollout.engine)
    if engine_name == "vllm":  # the tokenizer here, the weights in vLLM only
        from transformers import AutoTokenizer

        model, tokenizer = None, AutoTokenizer.from_pretrained(checkpoint)
        model_files.check_tokenizer_fits(tokenizer, spec, f"--checkpoint {checkpoint}")
        model_files.check_finite_files(checkpoint, "--checkpoint")
        engine = build_vllm_engine(config, str(checkpoint), device, seed=config.train.seed)
    else:
        model, tokenizer = load_model(str(checkpoint), DTYPES[config.model.dtype], device, what="--checkpoint")
        engine = None
    try:
        with torch.no_grad():
            result = evaluate(model, tokenizer, examples, config.data.template, config.eval,
                              config.model.enable_thinking, engine=engine, progress=not args.no_progress)
    finally:
        if engine is not None:
            engine.close()
    result["engine"] = engine_name
    out.write_text(json.dumps(result, indent=1))
    print(f"mean@{result['k']} = {result['mean_at_k']:.4f} over {result['questions']} questions, {engine_name} "
          f"engine  ({out})")
    return 0


def _warm_start(args) -> int:
    from llm_runs.experiment.config import DemoConfig
    from llm_runs.experiment.warm_start import warm_start

    record = warm_start(load(args.config, args.overrides, schema=DemoConfig), args.out, progress=not args.no_progress)
    print(json.dumps(record, indent=1))
    return 0


def _bench(args) -> int:
    if args.peer == "trl":
        from llm_runs.tools import bench_trl

        results = bench_trl.measure(args.config, args.overrides, args.steps, args.repeats,
                                    progress=lambda line: print(line, file=sys.stderr, flush=True))
        print(bench_trl.report(results))
        return 0
    from llm_runs.tools.bench import measure, report

    print(report(measure(args.config, args.overrides, args.steps, args.repeats)))
    return 0


def _bench_loss(args) -> int:
    from llm_runs.tools.bench_loss import command

    return command(args)


def _smoke(args) -> int:
    from llm_runs.tools.smoke import command

    return command(args)


def _bench_checkpoint_command(args) -> int:
    from llm_runs.tools.bench_checkpoint import command

    return command(args)


def _plan(args) -> int:
    from llm_runs.tools.plan import Assumptions, grid, grid_report, plan, report

    a = Assumptions(args.gpus, args.generation_tokens_per_s, args.training_tokens_per_s, args.response_tokens,
                    args.test_questions)
    if args.grid:
        result = grid(args.seeds, a, args.overrides)
        print(grid_report(result))
    elif args.config is None:
        raise ConfigError("plan needs --config NAME (or --grid for the paper's 48 runs)")
    else:
        result = plan(args.config, args.overrides, a, args.run)
        print(report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


def _demo(args) -> int:
    from llm_runs.experiment.demo import run, save_figure, table

    if args.replot:
        figure = Path(args.figure) if args.figure else (Path(args.out) / "llm_demo_quick" if args.quick
                                                        else Path("figures") / "llm_demo")
        if not figure.with_suffix(".json").exists():
            raise ConfigError(f"--replot needs {figure.with_suffix('.json')}; run the demo first")
        data = json.loads(figure.with_suffix(".json").read_text())
        data["files"] = [str(p) for p in save_figure(data, figure)]
    else:
        data = run(args.out, args.quick, args.seeds, args.methods, args.overrides, args.figure,
                   progress=not args.no_progress)
    w = data["warm_start"]
    print(f"warm start: held-out mean@{w['k']} {w['held_out_mean_at_k']:.3f}, format {w['held_out_format_rate']:.3f}, "
          f"copies the demonstrated letter {w['copy_rate']:.3f} ({w['steps']} steps, {w['seconds']:.0f} s)")
    print(table(data))
    print(f"figure: {', '.join(data['files'])}  ({data['seconds']:.0f} s)")
    return 0


def _seed_range(text: str):
    """--seeds: "K" → K (seeds 0..K-1), "A-B" → [A, …, B]."""
    try:
        if "-" in text:
            first, last = (int(x) for x in text.split("-"))
            if 0 <= first <= last:
                return list(range(first, last + 1))
        elif int(text) >= 1:
            return int(text)
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"expected K ≥ 1 (seeds 0..K-1) or A-B with 0 ≤ A ≤ B, got {text!r}")


def _study(args) -> int:
    from llm_runs.experiment import study

    out = Path(args.out or ("runs/study_quick" if args.quick else "runs/study"))
    figure = study.figure_path(out, args.quick, args.report)
    if args.replot:
        if not figure.with_suffix(".json").exists():
            raise ConfigError(f"--replot needs {figure.with_suffix('.json')}; run the study first")
        data = json.loads(figure.with_suffix(".json").read_text())
        data["files"] = [str(p) for p in study.save_figure(data, figure)]
    else:
        if args.jobs < 1:
            raise ConfigError(f"--jobs must be at least 1, got {args.jobs}")
        data = study.run(out, args.quick, args.seeds, args.jobs, args.arms, args.settings, args.overrides,
                         report_path=args.report, against=args.against or ())
    print(study.table(data))
    print(f"report: {', '.join(data['files'])}  ({data['seconds']:.0f} s; {len(data.get('trained', []))} runs trained, "
          f"{len(data.get('reused', []))} reused)")
    return 0


def _compare(args) -> int:
    from llm_runs.compare import compare
    from llm_runs.report import save_figure, table

    data = compare(args.runs)
    print(table(data))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(data, indent=1))
        print(f"json: {args.json}")
    if args.figure:
        print(f"figure: {', '.join(map(str, save_figure(data, args.figure)))}")
    return 0


def _data(args) -> int:
    from llm_runs import sciknoweval

    domains = [d.strip() for d in args.domains.split(",")] if args.domains else list(sciknoweval.DOMAINS)
    unknown = [d for d in domains if d not in sciknoweval.DOMAINS]
    if unknown:
        raise DataError(f"--domains: unknown {unknown}; the domains are {', '.join(sciknoweval.DOMAINS)}")
    sciknoweval.build(args.out, domains, args.source)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m llm_runs", description="SDPO and PGPO training of LLMs")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train (or resume) a run")
    train.add_argument("--config", help="a YAML file (see llm_runs/configs/)")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
    train.add_argument("--no-progress", action="store_true", help="no progress bar: timestamped lines instead (the default when the output is not a terminal)")
    train.add_argument("overrides", nargs="*", help="section.key=value")
    ev = sub.add_parser("eval", help="mean@k of a checkpoint on a split")
    ev.add_argument("--checkpoint", required=True, help="a checkpoint folder (transformers format)")
    ev.add_argument("--data", help="a split file (default: the run's data.test)")
    ev.add_argument("--out", help="where to write the result JSON (default: CHECKPOINT/eval.json)")
    ev.add_argument("--engine", choices=["hf", "vllm"], help="sampler (default: the run's rollout.engine)")
    ev.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                    help="weights' dtype for sampling (default: the run's model.dtype)")
    ev.add_argument("--no-progress", action="store_true", help="no progress bar")
    ev.add_argument("overrides", nargs="*", help="section.key=value")
    ws = sub.add_parser("warm-start", help="supervised format + copy-from-context phase (see llm_runs.experiment.warm_start)")
    ws.add_argument("--config", required=True, help="a config file or a shipped config's name (e.g. demo_cpu)")
    ws.add_argument("--out", required=True, help="folder for config.yaml, base_model/, final/, warm_start.json")
    ws.add_argument("--no-progress", action="store_true", help="no progress bar")
    ws.add_argument("overrides", nargs="*", help="section.key=value")
    bench = sub.add_parser("bench", help="seconds per step by stage, SDPO against PGPO (or, with --peer trl, "
                                         "this trainer against TRL's SDPO trainer)")
    bench.add_argument("--config", required=True, help="a config file or a shipped config's name")
    bench.add_argument("--peer", choices=["trl"], help="trl: this trainer, TRL's SDPOTrainer and TRL with pgpo.trl, "
                                                     "interleaved on matched settings (the trl extra)")
    bench.add_argument("--steps", type=int, default=5, help="timed steps per run (after one warm-up step)")
    bench.add_argument("--repeats", type=int, default=5, help="fresh runs per method")
    bench.add_argument("overrides", nargs="*", help="section.key=value")
    from llm_runs.tools import bench_loss, smoke

    bench_loss.add_parser(sub)
    bc = sub.add_parser("bench-checkpoint", help="a sharded run's checkpoint: DCP shards against a gather to rank 0, "
                                                 "seconds and peak memory")
    bc.add_argument("--shape", default="qwen3-8b", choices=["qwen3-8b", "tiny"], help="the model's shape (default qwen3-8b)")
    bc.add_argument("--layers", type=int, help="keep the first K decoder layers (default: all)")
    bc.add_argument("--repeats", type=int, default=3, help="saves of each kind, alternating (default 3)")
    bc.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"], help="weights' dtype (default bfloat16)")
    bc.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: CUDA, and the real shape is refused without it")
    bc.add_argument("--out", help="where to write (a shared folder for several nodes; default: a temporary folder)")
    smoke.add_parser(sub)
    pl = sub.add_parser("plan", help="GPU-hours and disk of a run, or of the paper's grid, before starting it")
    pl.add_argument("--config", help="a config file or a shipped config's name")
    pl.add_argument("--grid", action="store_true", help="every shipped qwen3_8b_* config × --seeds seeds, and the total")
    pl.add_argument("--seeds", type=int, default=3, help="seeds per config with --grid (default 3)")
    pl.add_argument("--run", metavar="RUN_DIR", help="also the time this run's measured steps imply")
    pl.add_argument("--gpus", type=int, default=8, help="GPUs per run (default 8)")
    pl.add_argument("--generation-tokens-per-s", type=float, default=1000.0,
                    help="per GPU, sampling (default 1000: an assumption; vLLM is unmeasured here)")
    pl.add_argument("--training-tokens-per-s", type=float, default=3500.0,
                    help="per GPU, teacher + student forward and backward (default 3500: measured on one H200)")
    pl.add_argument("--response-tokens", type=int, help="mean response length (default: rollout.max_new_tokens)")
    pl.add_argument("--test-questions", type=int, help="test questions per validation (default: counted from data.test)")
    pl.add_argument("--json", help="also write the numbers here")
    pl.add_argument("overrides", nargs="*", help="section.key=value")
    demo = sub.add_parser("demo", help="the CPU experiment: warm start, then SDPO vs PGPO on a synthetic task")
    demo.add_argument("--quick", action="store_true", help="one seed, SDPO and PGPO alpha=1 (what `make demo` runs)")
    demo.add_argument("--out", default="runs/demo", help="data, warm start and runs (reused and resumed)")
    demo.add_argument("--seeds", type=lambda v: [int(x) for x in v.split(",")], help="e.g. 0,1,2 (default: 0 "
                      "with --quick, else 0,1,2)")
    demo.add_argument("--methods", type=lambda v: [x.strip() for x in v.split(",")],
                      help="comma-separated names from llm_runs.experiment.demo.METHODS, e.g. 'SDPO,PGPO α=1'")
    demo.add_argument("--figure", help="path without extension (default: figures/llm_demo, or OUT/llm_demo_quick)")
    demo.add_argument("--replot", action="store_true", help="redraw the figure from its JSON")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.add_argument("overrides", nargs="*", help="section.key=value, applied to llm_runs/configs/demo_cpu.yaml")
    data = sub.add_parser("data", help="make the Science Q&A split files the configs read")
    data.add_argument("dataset", choices=["sciknoweval"], help="hicai-zju/SciKnowEval, cut as SDPO's authors did")
    data.add_argument("--out", required=True, help="the folder to write <domain>/{train,test}.json into")
    data.add_argument("--domains", help="comma-separated, of biology, chemistry, material, physics (default: all)")
    data.add_argument("--source", help="a local copy of the dataset in its own layout "
                                       "(data/<Domain>/sciknoweval_<domain>_test.jsonl) instead of the hub")
    st = sub.add_parser("study", help="is PGPO more than a larger learning rate? every arm, two settings, paired "
                                      "seeds, resumable (docs/results.md)")
    st.add_argument("--quick", action="store_true", help="every arm once on a few steps (CI; under 5 minutes)")
    st.add_argument("--jobs", type=int, default=2, help="runs at once, one process and one torch thread each")
    st.add_argument("--seeds", type=_seed_range, help="K: seeds 0..K-1 (default 10, or 1 with --quick); or A-B: "
                                                      "seeds A..B (new seeds for a confirmatory run)")
    st.add_argument("--out", help="data, warm start and runs, reused and resumed (default runs/study, or "
                                  "runs/study_quick with --quick)")
    st.add_argument("--arms", type=lambda v: [x.strip() for x in v.split(",")],
                    help="comma-separated names from llm_runs.experiment.study.ARMS (default: the full "
                         "study's, STUDY_ARMS; every arm with --quick)")
    st.add_argument("--against", type=lambda v: [x.strip() for x in v.split(",")],
                    help="arms to take paired differences against, besides SDPO and the replays (e.g. the arm "
                         "with a variant's mean step)")
    st.add_argument("--settings", type=lambda v: [x.strip() for x in v.split(",")], help="demo, collapse (default both)")
    st.add_argument("--report", metavar="PATH", help="write the report to PATH.json/.md/.png/.pdf (default "
                                                     "figures/llm_study, or OUT/llm_study_quick with --quick)")
    st.add_argument("--replot", action="store_true", help="redraw the figure from its JSON "
                                                          "(figures/llm_study.json, OUT/llm_study_quick.json "
                                                          "with --quick, or PATH.json with --report)")
    st.add_argument("overrides", nargs="*", help="section.key=value, applied after the study's own")
    cmp = sub.add_parser("compare", help="SDPO vs PGPO over run folders (finished or not): best and final validation "
                                         "mean@k per domain and method, mean ± std over seeds, beside the paper's Table 1")
    cmp.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders, or folders of them (e.g. runs/)")
    cmp.add_argument("--figure", help="validation mean@k against step, a panel per domain: PATH.png and PATH.pdf "
                                      "(or PATH alone, with a .png/.pdf/.svg suffix)")
    cmp.add_argument("--json", help="write the table's data (and every run's validations) here")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    # section.key=value overrides may follow an option (`train --config X --no-progress a.b=1`): argparse stops
    # filling the positional list at the first option, so they come back here
    stray = [x for x in rest if x.startswith("-") or "=" not in x or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if rest:
        args.overrides = [*args.overrides, *rest]
    try:
        return {"data": _data, "train": _train, "eval": _eval, "bench": _bench, "bench-loss": _bench_loss, "smoke": _smoke, "bench-checkpoint": _bench_checkpoint_command,
                "demo": _demo, "study": _study,
                "warm-start": _warm_start, "compare": _compare, "plan": _plan}[args.command](args)
    except (ConfigError, DataError) as err:  # bad input: one line naming the key, file or field, never a traceback
        parser.exit(2, f"error: {err}\n")
    except Preempted as stop:  # a run inside another command (the demo's): checkpoint written, resumable
        parser.exit(PREEMPTED, f"{stop} (exit code {PREEMPTED})\n")
    except OSError as err:
        if isinstance(err, StorageError):
            parser.exit(2, f"error: {err.strerror}\n")
        if err.errno in (errno.ENOSPC, errno.EDQUOT):  # a log or result file on a full disk
            parser.exit(2, f"error: no space left on the device while writing {err.filename or 'a file'}\n")
        if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM) and err.filename:  # a result into a read-only place
            parser.exit(2, f"error: cannot write {err.filename} ({err.strerror})\n")
        raise


if __name__ == "__main__":
    sys.exit(main())
