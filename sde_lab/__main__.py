"""`python -m sde_lab verify [--quick] [--json PATH] [--jobs N]`, `python -m sde_lab bench` and
`python -m sde_lab figures [--jobs N]`: the studies (`sde_lab.studies`).

A request that cannot be met (no such claim or figure, no saved data to replot, a device this machine lacks, a
result file that cannot be written) ends in one `error:` line and exit status 2, before anything is computed."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def _at_least_one(what: str = ""):
    """An argparse type: a whole number ≥ 1 (`what`: the unit named in the error, "" for none)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1:
            raise argparse.ArgumentTypeError(f"expected a whole number{what} >= 1, got {text!r}")
        return value
    return parse


_jobs = _at_least_one()  # --jobs N: worker processes
_paths = _at_least_one(" of paths")  # --paths M


def _device(text: str) -> str:
    """--device: a torch device that this machine has (cpu, cuda, cuda:N, mps)."""
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a torch device (cpu, cuda, cuda:N, mps)") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise argparse.ArgumentTypeError(f"{text!r}: CUDA is not available on this machine (torch "
                                             f"{torch.__version__}, torch.cuda.is_available() is False); use --device cpu")
        if device.index is not None and device.index >= count:
            raise argparse.ArgumentTypeError(f"{text!r}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: MPS is not available on this machine; use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise argparse.ArgumentTypeError(f"{text!r}: the bench runs on cpu, cuda or mps, not {device.type}")
    return text


def _writable(parser: argparse.ArgumentParser, option: str, path: str) -> None:
    """Make the folder of the result file `path` (given as `option`), or end in one error: line if it cannot be
    written there, before any minute is spent computing what would go in it."""
    target = Path(path)
    if target.is_dir():
        parser.error(f"{option} {path}: is a folder; give a file name, e.g. {target / 'result.json'}")
    folder = target.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        parser.error(f"{option} {path}: cannot make the folder {folder}, a file stands in its way")
    except OSError as err:
        parser.error(f"{option} {path}: cannot make the folder {folder} ({err.strerror or err})")
    if not os.access(folder, os.W_OK | os.X_OK) or (target.exists() and not os.access(target, os.W_OK)):
        parser.error(f"{option} {path}: cannot write there (permission denied)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sde_lab", description="Weak-order checks of SGD and PGPO.")
    sub = parser.add_subparsers(dest="command", required=True)
    verify = sub.add_parser("verify", help="measure the weak-order claims (docs/weak_order.md) and print one table")
    verify.add_argument("--quick", action="store_true", help="fewer paths and shorter ladders (under a minute)")
    verify.add_argument("--json", metavar="PATH", help="also write the rows as JSON (its folder is made if missing)")
    verify.add_argument("--only", metavar="TEXT", help="run only the claims whose label contains TEXT")
    verify.add_argument("--jobs", type=_jobs, default=None, metavar="N",
                        help="claims measured side by side, one process each (default: one per CPU core)")
    bench = sub.add_parser("bench", help="engine throughput against sdeint, torchsde and the bare normal draws")
    bench.add_argument("--paths", type=_paths, default=1000, help="paths per timed run (default: 1000)")
    bench.add_argument("--sdeint-paths", type=_paths, default=None, help="time sdeint on fewer paths and scale")
    bench.add_argument("--device", type=_device, default="cpu", help="torch device of the engine's runs (default: cpu)")
    bench.add_argument("--json", metavar="PATH", help="also write the numbers as JSON (its folder is made if missing)")
    figures = sub.add_parser("figures", help="regenerate the theory figures (PNG, PDF and the JSON behind each)")
    figures.add_argument("--quick", action="store_true", help="shorter ladders, fewer paths")
    figures.add_argument("--out", default="figures", help="output folder (default: figures/)")
    figures.add_argument("--replot", action="store_true", help="redraw from the saved JSON, computing nothing")
    figures.add_argument("--only", metavar="NAME", help="one figure by name")
    figures.add_argument("--jobs", type=_jobs, default=None, metavar="N",
                         help="figures computed side by side, one process each (default: one per CPU core)")
    args = parser.parse_args(argv)

    if args.command == "figures":
        from sde_lab.studies.figures import names, run as run_figures, saved

        if args.only is not None and args.only not in names():
            figures.error(f"--only {args.only!r} names no figure; the figures are {', '.join(names())}")
        wanted = names() if args.only is None else [args.only]
        if Path(args.out).exists() and not Path(args.out).is_dir():
            figures.error(f"--out {args.out}: is a file, not a folder")
        if args.replot and not saved(args.out, wanted):
            data = f"{args.only}.json" if args.only is not None else "NAME.json for any figure"
            figures.error(f"--replot: no saved figure data ({data}) in {args.out}/; run without --replot first")
        start = time.perf_counter()
        missing = [n for n in wanted if n not in saved(args.out, wanted)] if args.replot else []
        try:
            written = run_figures(args.out, quick=args.quick, replot=args.replot, only=args.only, jobs=args.jobs)
        except ValueError as err:
            if not args.replot:  # computing a figure raised: a bug, with its traceback
                raise
            figures.error(str(err))  # saved data that is not figure data
        print(f"{len(written) // 3} figures written to {args.out}/ ({time.perf_counter() - start:.0f} s)")
        if missing:  # a replot redraws what was saved; the others need computing
            print(f"not replotted, no saved data in {args.out}/: {', '.join(missing)}")
        return 0

    if args.command == "bench":
        import json

        from sde_lab.studies.bench import report, run as run_bench

        if args.json:
            _writable(bench, "--json", args.json)
        result = run_bench(paths=args.paths, sdeint_paths=args.sdeint_paths, device=args.device)
        print(report(result))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=2)
        return 0

    if args.command == "verify":
        from sde_lab.studies.verify import run, select, table

        try:
            select(args.quick, args.only)
        except ValueError as err:
            verify.error(str(err))
        if args.json:
            _writable(verify, "--json", args.json)
        start = time.perf_counter()
        rows = run(quick=args.quick, json_path=args.json, only=args.only, jobs=args.jobs)
        print(table(rows))
        failed = [r for r in rows if r.must_hold and not r.ok]
        print(f"\n{len(rows) - len(failed)} of {len(rows)} claims borne out"
              f" ({'quick' if args.quick else 'full'} run, {time.perf_counter() - start:.0f} s)")
        for r in failed:
            print(f"FAILED: {r.problem} {r.process} vs {r.sde}: {r.verdict}", file=sys.stderr)
        return 1 if failed else 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
