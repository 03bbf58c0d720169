"""python -m benchmarks: time sepconv_gpu against its peers, layer by layer.

Every implementation is checked against a float64 reference before it is timed; a wrong
result (ours or a peer's) fails the run (exit status 1, each named), after the record is
written. Writes <out>/<device>-<UTC time>.json, rewritten after every layer (`complete`
false until the end), and with matplotlib the -speedup.png and -roofline.png plots
beside it; prints the table. `--replot` of one or more records (per-suite records of one
device are merged) prints the table again and, given --out, writes the plots there.
Argument errors: one line, exit status 2, before anything is timed or written.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from pathlib import Path

from sepconv_gpu._progress import Progress

from . import peers, predict, report, runner, suites

RESULTS = Path(__file__).parent / "results"


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage block
        _refuse(message)


def _refuse(message):
    sys.stderr.write(f"python -m benchmarks: error: {message}\n")
    raise SystemExit(2)


def _positive(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, received {text!r}")
    return value


def parse_args(argv=None):
    p = _Parser(prog="python -m benchmarks", description=__doc__,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "gpu"), default=None,
                   help="where to time (default: gpu when a CUDA device answers, else cpu)")
    p.add_argument("--suite", default="all",
                   help=f"comma-separated suites: {', '.join(suites.SUITES)}; 'all' = every one "
                        "but 'tiny' (default: all)")
    p.add_argument("--dtype", default=None,
                   help=f"comma-separated modes from {', '.join(peers.MODES)}; tf32 means the peers' "
                        "TF32 on, ours TF32 where offered, else exact (default: gpu all, cpu float32)")
    p.add_argument("--batch", type=_positive, default=None, help="batch size (default: gpu 32, cpu 8)")
    p.add_argument("--repeats", type=_positive, default=None,
                   help="rounds of samples per implementation (default: gpu 20, cpu 9, --quick 3); "
                        "with --host-overhead the calls timed")
    p.add_argument("--peers", default=None,
                   help="comma-separated peers, or 'none' (default: every peer of the device, "
                        "torch.compile's only in the publication profile or with --compile: "
                        + "; ".join(f"{d}: {', '.join(p)}" for d, p in peers.PEERS.items()) + ")")
    p.add_argument("--quick", action="store_true",
                   help="the quick profile (the device check's): 3 rounds, one warm-up call, "
                        "no least sample length, no torch.compile unless --compile; stamped "
                        "'quick' in the record, the table and the plots")
    p.add_argument("--compile", action="store_true",
                   help="time the torch.compile peers (default and max-autotune-no-cudagraphs) "
                        "in the quick profile too")
    p.add_argument("--out", type=Path, default=None,
                   help="folder for the JSON record and PNG plots (default: benchmarks/results; "
                        "--replot writes plots only where --out says)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--replot", type=Path, nargs="+", metavar="JSON",
                   help="time nothing: print the table of a record (several per-suite records "
                        "of one device: merged into one) and, with --out, write the plots and "
                        "the merged record there")
    p.add_argument("--predict", action="store_true",
                   help="time nothing, no GPU needed: the cost model's plan and time per layer "
                        "at batch 32 in float16 and TF32, vs PyTorch-eager estimates and the "
                        "model's floor")
    p.add_argument("--host-overhead", action="store_true",
                   help="time what a call costs in Python per suite layer (no GPU: the CUDA "
                        "path against a fake CuPy), next to PyTorch's CPU module (see "
                        "benchmarks/host_overhead.py); --repeats sets the calls timed")
    return p.parse_args(argv)


def _stamp():
    return f"{datetime.datetime.now(datetime.timezone.utc):%Y%m%d-%H%M%S}"


def _out_folder(path):
    """The output folder, made now: a path naming a file or one that cannot be made is an
    argument error, found before anything is timed."""
    if path.exists() and not path.is_dir():
        _refuse(f"--out {path} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as why:
        _refuse(f"--out {path}: cannot make the folder ({why.strerror or why})")
    if not os.access(path, os.W_OK):
        _refuse(f"--out {path}: the folder is not writable")
    return path


def _read_record(path):
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        _refuse(f"--replot {path}: no such file")
    except (OSError, UnicodeDecodeError, ValueError) as why:
        _refuse(f"--replot {path}: not a benchmark record ({type(why).__name__})")
    if not (isinstance(record, dict) and isinstance(record.get("layers"), list)
            and isinstance(record.get("settings"), dict) and "modes" in record["settings"]
            and isinstance(record.get("device"), dict)):
        _refuse(f"--replot {path}: not a benchmark record (no layers, settings or device)")
    return record


def _plot(record, stem):
    """The plots' file names, [] when matplotlib is missing (said on one line)."""
    try:
        return [Path(p).name for p in report.plot(record, str(stem))]
    except ImportError:
        print("matplotlib is not installed: no plots (pip install 'sepconv_gpu[bench]')")
        return []


def replot(paths, out):
    """The table of one record, or of per-suite records merged; with `out`, the plots
    (and a merged record) written there under new names, never over existing files."""
    records = [_read_record(path) for path in paths]
    try:
        record = report.merge(records) if len(records) > 1 else records[0]
    except ValueError as why:
        _refuse(f"--replot: {why}")
    if len(records) > 1:
        record["merged_from"] = [str(path) for path in paths]
    stem = None
    if out is not None:
        name = paths[0].stem if len(paths) == 1 else f"merged-{record['device']['kind']}-{_stamp()}"
        stem = _out_folder(out) / f"{name}-replot"
        taken = [p for p in (Path(f"{stem}{s}") for s in ("-speedup.png", "-roofline.png", ".json"))
                 if p.exists()]
        if taken:
            _refuse(f"--replot would overwrite {taken[0]}; choose another --out")
    report.fill_missing(record)
    print(report.table(record))
    if stem is not None:
        record["plots"] = _plot(record, stem)
        merged = Path(f"{stem}.json")  # a stem may hold dots: never with_suffix
        if len(records) > 1:
            merged.write_text(json.dumps(record, indent=1) + "\n")
        print("wrote " + ", ".join([str(merged)] * (len(records) > 1) + record["plots"]))
    return record


def _save(path):
    """Writes the record atomically: a run stopped meanwhile leaves the last whole one."""
    def save(record):
        partial = path.with_suffix(".json.tmp")
        partial.write_text(json.dumps(record, indent=1) + "\n")
        os.replace(partial, path)
    return save


def main(argv=None):
    args = parse_args(argv)
    if args.replot:
        return replot(args.replot, args.out)
    try:
        layers = suites.select(args.suite)
    except ValueError as why:
        _refuse(str(why))
    if args.predict:
        return predict.main(layers)
    if args.host_overhead:
        from . import host_overhead

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
        _refuse(f"unknown --dtype {bad}; choose from {list(peers.MODES)}")
    known = peers.PEERS[args.device]
    compile_ = args.compile or settings["profile"] == "publication"
    chosen = [p for p in known if compile_ or p not in peers.COMPILE_PEERS] \
        if args.peers is None else [
        p.strip() for p in args.peers.split(",") if p.strip() and p.strip() != "none"]
    if bad := [p for p in chosen if p not in known]:
        _refuse(f"unknown --peers {bad} for {args.device}; choose from {list(known)}")
    settings["compile"] = any(p in peers.COMPILE_PEERS for p in chosen)
    out = _out_folder(args.out or RESULTS)
    batch = args.batch or defaults["batch"]
    if settings["autotune"]:  # the device picks among the planner's candidates (README)
        from sepconv_gpu.backends.cuda import autotune

        autotune.set_autotune(True)

    stem = out / f"{args.device}-{_stamp()}"
    with Progress(len(layers) * len(modes) * (1 + len(chosen)), label="benchmark") as progress:
        record = runner.run(args.device, layers, modes, batch, chosen, settings, progress,
                            save=_save(stem.with_suffix(".json")))
    print(report.table(record))
    disturbed = [l["key"] for l in record["layers"] if not l["undisturbed"]]
    if disturbed:
        print(f"\nwarning: other processes ran while timing {len(disturbed)} layer(s), "
              f"skewing their times: {', '.join(disturbed)}")
    record["plots"] = [] if args.no_plots else _plot(record, stem)
    _save(stem.with_suffix(".json"))(record)
    print(f"\nwrote {stem.with_suffix('.json')}" + "".join(f", {p}" for p in record["plots"]))
    if record["failures"]:
        sys.stderr.write("FAILED: wrong results (not timed):\n"
                         + "".join(f"  {line}\n" for line in record["failures"]))
        raise SystemExit(1)
    return record


if __name__ == "__main__":
    main()
