"""python -m benchmarks: time sepconv_gpu against its peers, layer by layer.

Writes <out>/<device>-<UTC time>.json and, with matplotlib, the -speedup.png and
-roofline.png plots beside it; prints the table.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

from sepconv_gpu._progress import Progress

from . import peers, predict, report, runner, suites


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "gpu"), default=None,
                   help="where to time (default: gpu when a CUDA device answers, else cpu)")
    p.add_argument("--suite", default="all",
                   help=f"comma-separated suites: {', '.join(suites.SUITES)}; 'all' = every one "
                        "but 'tiny' (default: all)")
    p.add_argument("--dtype", default=None,
                   help=f"comma-separated modes from {', '.join(peers.MODES)}; tf32 means the peers' "
                        "TF32 on, ours TF32 where offered, else exact (default: gpu all, cpu float32)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default: gpu 32, cpu 8)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed samples per implementation (default: gpu 100, cpu 9, --quick 3)")
    p.add_argument("--peers", default=None,
                   help="comma-separated peers, or 'none' (default: every peer of the device: "
                        + "; ".join(f"{d}: {', '.join(p)}" for d, p in peers.PEERS.items()) + ")")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: few samples, one warm-up call, no least sample length")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results",
                   help="folder for the JSON record and PNG plots (default: benchmarks/results)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--replot", type=Path, metavar="JSON",
                   help="time nothing: print the table and redraw the plots of a result file")
    p.add_argument("--predict", action="store_true",
                   help="time nothing, no GPU needed: the cost model's plan and time per layer "
                        "at batch 32 in float16 and TF32, vs PyTorch-eager estimates and the "
                        "model's floor")
    p.add_argument("--host-overhead", action="store_true",
                   help="time what a call costs in Python per suite layer (no GPU: the CUDA "
                        "path against a fake CuPy), next to PyTorch's CPU module (see "
                        "benchmarks/host_overhead.py); --repeats sets the calls timed")
    return p.parse_args(argv)


def replot(path):
    record = json.loads(path.read_text())
    print(report.table(record))
    stem = path.with_suffix("")
    print("wrote " + ", ".join(report.plot(record, str(stem))))
    return record


def main(argv=None):
    args = parse_args(argv)
    if args.replot:
        return replot(args.replot)
    if args.predict:
        try:
            return predict.main(suites.select(args.suite))
        except ValueError as why:
            sys.exit(str(why))
    if args.host_overhead:
        from . import host_overhead

        try:
            layers = suites.select(args.suite)
        except ValueError as why:
            sys.exit(str(why))
        calls = {k: args.repeats for k in host_overhead.DEFAULT_CALLS} if args.repeats else None
        return host_overhead.run(layers, calls)
    if args.device is None:
        from sepconv_gpu.backends import cuda_available

        args.device = "gpu" if cuda_available() else "cpu"
    defaults = runner.DEFAULTS[args.device]
    settings = {k: v for k, v in defaults.items() if k not in ("batch", "dtypes")}
    if args.quick:
        settings.update(runner.QUICK)
    if args.repeats:
        settings["repeats"] = args.repeats
    modes = [m.strip() for m in (args.dtype or defaults["dtypes"]).split(",")]
    if bad := [m for m in modes if m not in peers.MODES]:
        sys.exit(f"unknown --dtype {bad}; choose from {peers.MODES}")
    known = peers.PEERS[args.device]
    chosen = list(known) if args.peers is None else [
        p.strip() for p in args.peers.split(",") if p.strip() and p.strip() != "none"]
    if bad := [p for p in chosen if p not in known]:
        sys.exit(f"unknown --peers {bad} for {args.device}; choose from {list(known)}")
    try:
        layers = suites.select(args.suite)
    except ValueError as why:
        sys.exit(str(why))
    batch = args.batch or defaults["batch"]
    if settings["autotune"]:  # the device picks among the planner's candidates (README)
        from sepconv_gpu.backends import autotune

        autotune.set_autotune(True)

    with Progress(len(layers) * len(modes) * (1 + len(chosen)), label="benchmark") as progress:
        record = runner.run(args.device, layers, modes, batch, chosen, settings, progress)
    print(report.table(record))
    disturbed = [l["key"] for l in record["layers"] if not l["undisturbed"]]
    if disturbed:
        print(f"\nwarning: other processes ran while timing {len(disturbed)} layer(s), "
              f"skewing their times: {', '.join(disturbed)}")

    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"{args.device}-{datetime.datetime.now(datetime.timezone.utc):%Y%m%d-%H%M%S}"
    record["plots"] = []
    if not args.no_plots:
        try:
            record["plots"] = [Path(p).name for p in report.plot(record, str(stem))]
        except ImportError:
            print("matplotlib is not installed: no plots (pip install 'sepconv_gpu[bench]')")
    stem.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"\nwrote {stem.with_suffix('.json')}" + "".join(f", {p}" for p in record["plots"]))
    return record


if __name__ == "__main__":
    main()
