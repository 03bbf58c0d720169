"""The printed table and the PNG plots of a result record."""
from __future__ import annotations

from .peers import OURS


def _ms(seconds):
    return f"{seconds * 1e3:9.3f}"


def _model(ours):
    """Kernel kind, predicted time and measured / predicted of our entry's cost model."""
    model = ours.get("model", {})
    if "predicted_us" not in model:
        return f" {'-':>6} {'-':>9} {'-':>8}"
    ratio = f"{model['ratio']:.2f}" if "ratio" in model else "-"
    return f" {model['kernel']:>6} {_ms(model['predicted_us'] * 1e-6)} {ratio:>8}"


def _cpu_kernel(ours):
    """The CPU kernel that ran our call and its threads."""
    run = ours.get("cpu_kernel", {})
    return f" {run.get('kernel', '-'):>13} {run.get('threads') or '-':>7}"


def table(record):
    """Per mode: each layer's time, % of the roofline floor, on a GPU the CUDA kernel the
    dispatch picks with the cost model's predicted time and measured / predicted, on the
    CPU the CPU kernel that ran, its threads and our peak extra memory over input + output
    size, and the speedup vs each peer (peer time / ours; '!' marks a peer whose output
    disagreed, '-' one that did not run)."""
    peers, lines = record["peers"], []
    device = record["device"]
    memory = device["kind"] == "cpu"
    facts = _cpu_kernel if memory else _model
    for mode in record["settings"]["modes"]:
        lines.append(f"\n{mode} | batch {record['settings']['batch']} | {device['kind']}: {device['name']}")
        head = f"{'layer':38} {'x':>3} {'ours ms':>9} {'%floor':>7} " + (
            f"{'cpu kernel':>13} {'threads':>7} {'mem/io':>6}" if memory
            else f"{'kernel':>6} {'model ms':>9} {'ours/mdl':>8}")
        head += "".join(f" {peer + ' ms':>18} {'speedup':>8}" for peer in peers)
        lines += [head, "-" * len(head)]
        for layer in record["layers"]:
            impls = layer["modes"][mode]["impls"]
            ours = impls.get(OURS, {})
            row = f"{layer['key']:38.38} {layer['repeat']:>3} "
            row += f"{_ms(ours['median_s'])} {ours['pct_of_floor']:6.0f}%" if "median_s" in ours else f"{'-':>9} {'-':>7}"
            row += facts(ours)
            if memory:
                row += f" {ours['peak_extra_bytes'] / ours['io_bytes']:6.2f}" if "io_bytes" in ours else f" {'-':>6}"
            for peer in peers:
                r = impls.get(peer, {})
                if "median_s" not in r:
                    row += f" {'-':>18} {'-':>8}"
                    continue
                speedup = f"{r['speedup']:.2f}x" if "speedup" in r else "-"
                row += f" {_ms(r['median_s']):>18} {speedup + ('' if r.get('agrees', True) else '!'):>8}"
            lines.append(row)
        for label, key in (("geomean speedup", "geomean_speedup"), ("min speedup", "min_speedup"),
                           ("network total (x repeat)", "total_speedup")):
            row = f"{label:38} {'':>3} {'':>9} {'':>7} " + " " * (len(facts({})) - 1) + f" {'':>6}" * memory
            for peer in peers:
                s = record["summary"].get(f"{mode}/{peer}", {})
                row += f" {'':>18} {(f'{s[key]:.2f}x' if key in s else '-'):>8}"
            lines.append(row)
        ours = record["summary"].get(f"{mode}/{OURS}")
        if ours:
            lines.append(f"median time / roofline floor (ours): {ours['median_pct_of_floor']:.0f}%")
        if ours and "model_ratio_geomean" in ours:
            lines.append(f"measured / cost model (ours, geomean): {ours['model_ratio_geomean']:.2f}")
        if record.get("threads"):
            lines.append("peers' threads: " + ", ".join(f"{k} {v}" for k, v in record["threads"].items()))
    return "\n".join(lines)


def _impls(record, mode):
    names = [OURS] + list(record["peers"])
    return [n for n in names if any("median_s" in layer["modes"][mode]["impls"].get(n, {})
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
    title = f"sepconv_gpu on {record['device']['name']} ({record['device']['kind']}), batch {record['settings']['batch']}"

    # Per-layer speedup bars: how many times longer each peer takes than ours.
    fig, axes = plt.subplots(len(modes), 1, squeeze=False,
                             figsize=(max(8, 0.42 * len(layers) + 3), 6 * len(modes)))
    for ax, mode in zip(axes[:, 0], modes):
        peers = [p for p in _impls(record, mode) if p != OURS]
        width = 0.8 / max(len(peers), 1)
        for k, peer in enumerate(peers):
            xs, ys = [], []
            for i, layer in enumerate(layers):
                r = layer["modes"][mode]["impls"].get(peer, {})
                if r.get("agrees"):
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
        intensity = [l["flops"] / l["bytes"][mode] for l in layers]
        lo, hi = min(intensity) / 2, max(intensity) * 2
        grid = [lo * (hi / lo) ** (i / 200) for i in range(201)]
        ax.plot(grid, [min(gemm, bandwidth * x) / 1e9 for x in grid], color="black",
                label=f"ceiling: {bandwidth / 1e9:.0f} GB/s copy, {gemm / 1e12:.2f} TFLOP/s GEMM")
        for marker, name in zip("o^sDvP*X", _impls(record, mode)):
            points = [(x, l["flops"] / r["median_s"] / 1e9) for x, l in zip(intensity, layers)
                      for r in [l["modes"][mode]["impls"].get(name, {})] if "median_s" in r]
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
