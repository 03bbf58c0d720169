"""The printed table and the PNG plots of a result record."""
from __future__ import annotations

from .peers import OURS


def _correct(result):
    """Whether a result is correct (records before the float64 gate said `agrees`)."""
    return result.get("correct", result.get("agrees", False))


def _x(value):
    return f"{value:.2f}x" if value else "-"


def profile_of(record):
    return record["settings"].get("profile", "unstamped")


def our_columns(record):
    """Our columns: (header, width, cell(our result)); a cell whose field is absent
    shows '-'. Add a column here to show another fact of ours."""
    columns = [("ours ms", 9, lambda o: f"{o['median_s'] * 1e3:.3f}")]      # per call
    if record["device"]["kind"] == "cpu":  # CPU facts: the CPU kernel that ran, its
        # threads, our peak extra memory over input + output
        return columns + [
            ("%floor", 7, lambda o: f"{o['pct_of_floor']:.0f}%"),
            ("cpu kernel", 13, lambda o: o["cpu_kernel"]["kernel"]),
            ("threads", 7, lambda o: str(o["cpu_kernel"]["threads"])),
            ("mem/io", 6, lambda o: f"{o['peak_extra_bytes'] / o['io_bytes']:.2f}")]
    return columns + [
        ("dev ms", 9, lambda o: f"{o['device_s'] * 1e3:.3f}"),       # device time
        ("%floor", 7, lambda o: f"{o['pct_of_floor']:.0f}%"),
        ("kernel", 6, lambda o: o["model"]["kernel"]),               # the CUDA kernel
        ("model ms", 9, lambda o: f"{o['model']['predicted_us'] / 1e3:.3f}"),
        ("ours/mdl", 8, lambda o: f"{o['model']['ratio']:.2f}")]


def peer_columns(record, peer):
    """A peer's columns, as `our_columns`: its per-call time and our speedup over it
    ('wrong' when its output failed the float64 check, '!' in records from before it
    when it disagreed with ours); on a GPU also the device-time speedup."""
    def speedup(r):
        return "wrong" if "wrong" in r else _x(r["speedup"]) + ("" if _correct(r) else "!")

    columns = [(f"{peer} ms", 24, lambda r: f"{r['median_s'] * 1e3:.3f}"), ("speedup", 8, speedup)]
    if record["device"]["kind"] == "gpu":
        columns.append(("dev x", 7, lambda r: _x(r["device_speedup"])))
    return columns


def _cells(columns, result):
    out = ""
    for _, width, cell in columns:
        try:
            text = cell(result)
        except (KeyError, TypeError, ZeroDivisionError):
            text = "-"
        out += f" {text:>{width}}"
    return out


def _heads(columns):
    return "".join(f" {head:>{width}}" for head, width, _ in columns)


def _cpu_kernel(ours):
    """The CPU kernel that ran our call and its threads."""
    run = ours.get("cpu_kernel", {})
    return f" {run.get('kernel', '-'):>13} {run.get('threads') or '-':>7}"


def table(record):
    """Per mode: each layer's row (`our_columns`, then `peer_columns` of each peer, then
    our speedup over the fastest correct peer of the layer); then the summaries: per peer
    over the layers, per suite network totals ('n/a' unless every layer of the suite has
    the peer), the headline, the A/A noise; the layers timed cache-resident; every wrong
    result."""
    peers, lines = record["peers"], []
    device = record["device"]
    summary = record.get("summary", {})
    ours_columns = our_columns(record)
    by_peer = {peer: peer_columns(record, peer) for peer in peers}
    for mode in record["settings"]["modes"]:
        lines.append(f"\n{mode} | batch {record['settings']['batch']} | profile "
                     f"{profile_of(record)} | {device['kind']}: {device['name']}")
        head = f"{'layer':38} {'x':>3}" + _heads(ours_columns)
        head += "".join(_heads(by_peer[peer]) for peer in peers) + f" {'vs best':>8}"
        lines += [head, "-" * len(head)]
        resident = []
        for layer in record["layers"]:
            entry = layer["modes"].get(mode, {})
            impls = entry.get("impls", {})
            if entry.get("rotation", {}).get("cache_resident"):
                resident.append(layer["key"])
            row = f"{layer['key']:38.38} {layer['repeat']:>3}" + _cells(ours_columns, impls.get(OURS, {}))
            row += "".join(_cells(by_peer[peer], impls.get(peer, {})) for peer in peers)
            lines.append(row + f" {_x((entry.get('best_peer') or {}).get('speedup')):>8}")
        width = 42 + len(_heads(ours_columns))
        rows = [("geomean speedup", "geomean_speedup"), ("min speedup", "min_speedup")]
        rows += [("device-time geomean", "device_geomean_speedup")] * (device["kind"] == "gpu")
        rows += [(f"network total {suite}", ("suite_total_speedup", suite))
                 for suite in dict.fromkeys(l["suite"] for l in record["layers"])]
        for label, key in rows:  # under each peer's speedup column, and under "vs best"
            row = f"{label:{width}}"
            for peer in peers + ["best_peer"]:
                s = summary.get(f"{mode}/{peer}", {})
                value = s.get(key[0], {}).get(key[1]) if isinstance(key, tuple) else s.get(key)
                cell = _x(value) if value else ("n/a" if s and isinstance(key, tuple) else "-")
                if peer == "best_peer":
                    row += f" {cell:>8}"
                else:
                    (_, time_width, _), _, *rest = by_peer[peer]
                    row += f" {'':>{time_width}} {cell:>8}" + "".join(f" {'':>{w}}" for _, w, _ in rest)
            lines.append(row)
        best = summary.get(f"{mode}/best_peer")
        if best:
            totals = ", ".join(f"{k} {_x(v) if v else 'n/a'}" for k, v in best["suite_total_speedup"].items())
            lines.append(f"headline, vs the fastest correct peer of each layer: geomean "
                         f"{best['geomean_speedup']:.2f}x per call"
                         + (f", {best['device_geomean_speedup']:.2f}x device time"
                            if "device_geomean_speedup" in best else "")
                         + f" over {best['layers']} layers; network totals: {totals}")
        ours = summary.get(f"{mode}/{OURS}")
        if ours:
            lines.append(f"median time / roofline floor (ours): {ours['median_pct_of_floor']:.0f}%")
        if ours and "aa_noise" in ours:
            lines.append(f"A/A control (ours against itself, median |paired ratio|): "
                         f"{ours['aa_noise']:.3f}x; smaller differences are noise")
        if ours and "model_ratio_geomean" in ours:
            lines.append(f"measured / cost model (ours, geomean): {ours['model_ratio_geomean']:.2f}")
        if resident:
            lines.append(f"inputs cache-resident (rotation within 2x the cache): {', '.join(resident)}")
    for failure in record.get("failures", []):
        lines.append(f"WRONG: {failure}")
        if record.get("threads"):
            lines.append("peers' threads: " + ", ".join(f"{k} {v}" for k, v in record["threads"].items()))
    return "\n".join(lines)


def fill_missing(record):
    """What an older record lacks, computed now: our `model` entry from the suite's layer
    (the cost model's choice; `filled_by` says so; layers no suite knows stay without),
    and a schema 1 record's summary (per-suite totals)."""
    import numpy as np

    from . import peers, runner, suites

    by_key = {layer.key: layer for layers in suites.SUITES.values() for layer in layers}
    batch = record["settings"]["batch"]
    for layer in record["layers"]:
        spec = by_key.get(layer["key"])
        for mode, entry in layer["modes"].items():
            ours = entry.get("impls", {}).get(OURS)
            if spec is None or ours is None or "model" in ours:
                continue
            dtype = peers.compute_dtype(mode)
            x = np.empty(spec.input_shape(batch), dtype)  # strides only: never written
            case = peers.Case(spec, batch, False, dtype, [x], spec.weights())
            ours["model"] = runner.model_entry(case, mode) | {
                "filled_by": "replot: the record predates the model fields"}
    if record.get("schema", 1) < 2:
        for layer in record["layers"]:
            for entry in layer["modes"].values():
                entry.setdefault("best_peer", runner.best_peer(entry["impls"]))
        record["summary"] = runner.summarize(record["layers"], record["settings"]["modes"],
                                             record["peers"])
    return record


def merge(records):
    """One report of per-suite records of one device, batch and profile: the layers in
    order, the peers and modes of all, the summary computed anew; `sources` keeps each
    record's provenance. Refuses records that are not comparable or share a layer."""
    from . import runner

    first = records[0]
    for field, get in (("device", lambda r: r["device"].get("name")),
                       ("batch", lambda r: r["settings"].get("batch")),
                       ("profile", lambda r: r["settings"].get("profile"))):
        values = {get(r) for r in records}
        if len(values) > 1:
            raise ValueError(f"the records differ in {field}: {sorted(map(str, values))}")
    keys = [layer["key"] for r in records for layer in r["layers"]]
    if len(set(keys)) < len(keys):
        raise ValueError(f"a layer is in several records: {sorted({k for k in keys if keys.count(k) > 1})}")
    merged = {k: v for k, v in first.items() if k not in ("layers", "summary", "plots")}
    merged["peers"] = list(dict.fromkeys(p for r in records for p in r["peers"]))
    modes = list(dict.fromkeys(m for r in records for m in r["settings"]["modes"]))
    merged["settings"] = {**first["settings"], "modes": modes}
    merged["layers"] = [layer for r in records for layer in r["layers"]]
    merged["failures"] = [f for r in records for f in r.get("failures", [])]
    merged["complete"] = all(r.get("complete", True) for r in records)
    merged["sources"] = [{k: r.get(k) for k in ("created", "git", "source_sha256", "kernels_sha256",
                                                 "settings", "complete", "wall_s")}
                         | {"suites": sorted({l["suite"] for l in r["layers"]})} for r in records]
    merged["summary"] = runner.summarize(merged["layers"], modes, merged["peers"])
    return merged


def _impls(record, mode):
    names = [OURS] + list(record["peers"])
    return [n for n in names if any("median_s" in layer["modes"].get(mode, {}).get("impls", {}).get(n, {})
                                    for layer in record["layers"])]


def plot(record, stem):
    """Write <stem>-speedup.png and <stem>-roofline.png; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    plain = ticker.FuncFormatter(lambda v, _: f"{v:g}")

    modes, layers = record["settings"]["modes"], record["layers"]
    colors = dict(zip([OURS] + list(record["peers"]), plt.get_cmap("tab10").colors))
    title = (f"sepconv_gpu on {record['device']['name']} ({record['device']['kind']}), batch "
             f"{record['settings']['batch']}, profile {profile_of(record)}")

    # Per-layer speedup bars: how many times longer each peer takes than ours.
    fig, axes = plt.subplots(len(modes), 1, squeeze=False,
                             figsize=(max(8, 0.42 * len(layers) + 3), 6 * len(modes)))
    for ax, mode in zip(axes[:, 0], modes):
        peers = [p for p in _impls(record, mode) if p != OURS]
        width = 0.8 / max(len(peers), 1)
        for k, peer in enumerate(peers):
            xs, ys = [], []
            for i, layer in enumerate(layers):
                r = layer["modes"].get(mode, {}).get("impls", {}).get(peer, {})
                if "speedup" in r and _correct(r):
                    xs.append(i + (k - (len(peers) - 1) / 2) * width)
                    ys.append(r["speedup"])
            s = record["summary"].get(f"{mode}/{peer}", {})
            label = peer + (f" (geomean {s['geomean_speedup']:.2f}x)" if s else "")
            ax.bar(xs, ys, width, label=label, color=colors[peer])
        ax.axhline(1, color="black", linewidth=0.8)
        ax.set_yscale("log", base=2)
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:.3g}x"))
        ax.set_ylabel("speedup of sepconv_gpu\n(peer time / ours)")
        ax.set_title(f"{mode}: per-layer speedup (>1: sepconv_gpu faster)")
        ax.set_xticks(range(len(layers)), [l["key"] + (f" (x{l['repeat']})" if l["repeat"] > 1 else "")
                                           for l in layers], rotation=90, fontsize=8)
        ax.set_xlim(-0.6, len(layers) - 0.4)
        ax.grid(axis="y", which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    paths = [f"{stem}-speedup.png"]
    fig.savefig(paths[0], dpi=110)
    plt.close(fig)

    # Roofline: achieved FLOP/s against arithmetic intensity, every layer and implementation.
    fig, axes = plt.subplots(1, len(modes), squeeze=False, figsize=(7 * len(modes), 5.5))
    ceilings = record["ceilings"]
    bandwidth = ceilings["copy_bandwidth_Bps"]
    for ax, mode in zip(axes[0], modes):
        gemm = ceilings["gemm_flops"].get(mode, ceilings["gemm_flops"]["float32"])
        intensity = [l["flops"] / l["bytes"][mode] if mode in l["bytes"] else None for l in layers]
        known = [x for x in intensity if x]
        lo, hi = min(known) / 2, max(known) * 2
        grid = [lo * (hi / lo) ** (i / 200) for i in range(201)]
        ax.plot(grid, [min(gemm, bandwidth * x) / 1e9 for x in grid], color="black",
                label=f"ceiling: {bandwidth / 1e9:.0f} GB/s copy, {gemm / 1e12:.2f} TFLOP/s GEMM")
        for marker, name in zip("o^sDvP*X", _impls(record, mode)):
            points = [(x, l["flops"] / r["median_s"] / 1e9) for x, l in zip(intensity, layers)
                      for r in [l["modes"].get(mode, {}).get("impls", {}).get(name, {})]
                      if "median_s" in r and x]
            ax.scatter(*zip(*points), marker=marker, s=28, alpha=0.8, label=name,
                       color=colors[name], edgecolors="none")
        ax.set_xscale("log")
        ax.set_yscale("log")
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_formatter(plain)
        ax.set_xlabel("arithmetic intensity (FLOP / minimal byte)")
        ax.set_ylabel("achieved GFLOP/s")
        ax.set_title(f"{mode}: roofline, {len(layers)} layers")
        ax.grid(which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    paths.append(f"{stem}-roofline.png")
    fig.savefig(paths[1], dpi=110)
    plt.close(fig)
    return paths
