"""`python -m sde_lab verify [--quick] [--json PATH] [--jobs N]`, `python -m sde_lab bench` and
`python -m sde_lab figures [--jobs N]`: the studies (`sde_lab.studies`)."""

from __future__ import annotations

import argparse
import sys
import time


def _jobs(text: str) -> int:
    """--jobs N: a whole number of worker processes, at least 1."""
    try:
        jobs = int(text)
    except ValueError:
        jobs = 0
    if jobs < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return jobs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sde_lab", description="Weak-order checks of SGD and PGPO.")
    sub = parser.add_subparsers(dest="command", required=True)
    verify = sub.add_parser("verify", help="measure the weak-order claims (docs/weak_order.md) and print one table")
    verify.add_argument("--quick", action="store_true", help="fewer paths and shorter ladders (under a minute)")
    verify.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    verify.add_argument("--only", metavar="TEXT", help="run only the claims whose label contains TEXT")
    verify.add_argument("--jobs", type=_jobs, default=None, metavar="N",
                        help="claims measured side by side, one process each (default: one per CPU core)")
    bench = sub.add_parser("bench", help="engine throughput against sdeint, torchsde and the bare normal draws")
    bench.add_argument("--paths", type=int, default=1000)
    bench.add_argument("--sdeint-paths", type=int, default=None, help="time sdeint on fewer paths and scale")
    bench.add_argument("--device", default="cpu")
    bench.add_argument("--json", metavar="PATH")
    figures = sub.add_parser("figures", help="regenerate the theory figures (PNG, PDF and the JSON behind each)")
    figures.add_argument("--quick", action="store_true", help="shorter ladders, fewer paths")
    figures.add_argument("--out", default="figures", help="output folder (default: figures/)")
    figures.add_argument("--replot", action="store_true", help="redraw from the saved JSON, computing nothing")
    figures.add_argument("--only", metavar="NAME", help="one figure by name")
    figures.add_argument("--jobs", type=_jobs, default=None, metavar="N",
                         help="figures computed side by side, one process each (default: one per CPU core)")
    args = parser.parse_args(argv)

    if args.command == "figures":
        from sde_lab.studies.figures import run as run_figures

        start = time.perf_counter()
        written = run_figures(args.out, quick=args.quick, replot=args.replot, only=args.only, jobs=args.jobs)
        print(f"{len(written) // 3} figures written to {args.out}/ ({time.perf_counter() - start:.0f} s)")
        return 0

    if args.command == "bench":
        import json

        from sde_lab.studies.bench import report, run as run_bench

        result = run_bench(paths=args.paths, sdeint_paths=args.sdeint_paths, device=args.device)
        print(report(result))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=2)
        return 0

    if args.command == "verify":
        from sde_lab.studies.verify import run, table

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
