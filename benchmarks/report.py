"""Turn the records of ``bench.py`` into docs/performance.md and its plot."""

from __future__ import annotations

import math
from pathlib import Path

from harness import mem_mb, s_per_epoch, terms_per_s
from rbf_memory import to_markdown as rbf_markdown

TARGETS = {"terms": 25.0, "e2e": 30.0, "memory": 0.1}  # the speed targets: per epoch, end to end; wide-marker memory


def _f(x, fmt="{:.3g}", none="–"):
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return none
    return fmt.format(x)


def _si(x):
    if x is None:
        return "–"
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= div:
            return f"{x / div:.3g} {unit}"
    return f"{x:.3g}"


def _mib(x):
    if x is None:
        return "–"
    return f"{x / 1024:.2f} GiB" if x >= 1024 else f"{x:.0f} MiB"


def _ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def _fit_linear(xs, ys):
    """Least-squares line through (x, y) pairs: (slope, intercept)."""
    n = len(xs)
    if n < 2:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    return slope, my - slope * mx


def peer_memory_estimate(case: dict, batch_size: int, device: str):
    """Peak of the peer at ``batch_size``: measured, or (when it was killed) extrapolated
    linearly from the smaller minibatches of the sweep. Returns (MiB, how)."""
    rec = case.get("peer_epochs") or {}
    m = mem_mb(rec, device)
    if m is not None:
        return m, "measured"
    pts = [(s["batch_size"], mem_mb(s, device)) for s in case.get("peer_sweep", []) if mem_mb(s, device)]
    fit = _fit_linear([p[0] for p in pts], [p[1] for p in pts])
    if fit:
        return fit[0] * batch_size + fit[1], f"extrapolated from minibatches {', '.join(str(p[0]) for p in pts)}"
    if rec.get("failed"):
        return None, rec["failed"]
    return None, "not measured"


def summarise(results: dict) -> dict:
    """The figures the targets are about."""
    dev, bs = results["device"], results["batch_size"]
    out: dict = {"cases": {}}
    for name, case in results["cases"].items():
        o, p = case.get("ours_epochs") or {}, case.get("peer_epochs") or {}
        row = {
            "ours_spe": s_per_epoch(o), "peer_spe": s_per_epoch(p),
            "ours_tps": terms_per_s(o), "peer_tps": terms_per_s(p),
            "ours_mem": mem_mb(o, dev), "peer_mem": mem_mb(p, dev),
            "ours_inc": _inc(o, dev), "peer_inc": _inc(p, dev),
            "peer_failed": p.get("failed"),
        }
        if case.get("ours_e2e") or case.get("peer_e2e"):
            oe, pe = case.get("ours_e2e") or {}, case.get("peer_e2e") or {}
            row.update(ours_e2e=oe.get("e2e_s"), peer_e2e=pe.get("e2e_s"), ours_ep=oe.get("epochs_run"),
                       peer_ep=pe.get("epochs_run"), ours_acc=oe.get("accuracy"), peer_acc=pe.get("accuracy"))
            spe = s_per_epoch(p)
            if pe.get("epochs_run") and pe.get("epochs_run") == pe.get("max_epochs") and spe and pe["max_epochs"] < 400:
                row["peer_e2e_400"] = (pe.get("setup_s") or 0) + 400 * spe + (pe.get("predict_s") or 0)
        if "peer_sweep" in case or p.get("failed"):
            est, how = peer_memory_estimate(case, bs, dev)
            row.update(peer_mem_est=est, peer_mem_how=how)
        out["cases"][name] = row
    return out


def _inc(rec, dev):
    m = mem_mb(rec, dev)
    if m is None or dev.startswith("cuda"):
        return m
    base = rec.get("rss_after_import_mb")
    return None if base is None else m - base


def _case_label(case):
    return f"{case['n_cells']:,} × {case['n_markers']:,} × {case['n_types']}"


def render_markdown(results: dict, cmd: str) -> str:
    info, dev, bs = results["machine"], results["device"], results["batch_size"]
    s = summarise(results)
    v = results.get("versions", {})
    L: list[str] = []
    L.append("# Performance: cellassign-nf vs scvi-tools CellAssign\n")
    if results.get("quick"):
        L.append("> **Smoke-test sizes (`--quick`)**: not the reference figures.\n")
    L.append(f"* Date: {results['date']}")
    L.append(f"* Machine: {info.get('cpu', '?')}, {info.get('nproc', '?')} cores (nproc), "
             f"{info.get('mem_gib', float('nan')):.1f} GiB memory; {info.get('platform', '')}; "
             f"load average {info.get('loadavg_start')} at the start, {info.get('loadavg_end')} at the end")
    L.append(f"* Device: `{dev}`; minibatch size {bs} on both sides")
    if "ours" in v:
        L.append(f"* Ours: cellassign-nf {v['ours'].get('version')}, torch {v['ours'].get('torch')}, "
                 f"{v['ours'].get('threads')} torch threads")
    if "peer" in v:
        L.append(f"* Peer: scvi-tools {v['peer'].get('version')} (`scvi.external.CellAssign`), torch "
                 f"{v['peer'].get('torch')}, {v['peer'].get('threads')} torch threads")
    L.append(f"* Command: `{cmd.strip()}` (total {results.get('total_s', 0) / 60:.1f} min)")
    L.append("")

    # ---- targets
    L.append("## Against the targets\n")
    if results.get("peer_python") is None:
        L.append("The peer was not measured (`--skip-peer`): no ratios.\n")
    L.append("| target | case | ours | peer | ours/peer | met? |")
    L.append("|---|---|---|---|---|---|")
    for name, row in s["cases"].items():
        case = results["cases"][name]
        lab = _case_label(case)
        if row["ours_tps"] and row["peer_tps"]:
            r = row["ours_tps"] / row["peer_tps"]
            L.append(f"| ≥ {TARGETS['terms']:g}× peer's cell·gene·type terms/s | {lab} | {_si(row['ours_tps'])} | "
                     f"{_si(row['peer_tps'])} | {r:.2f}× | {'yes' if r >= TARGETS['terms'] else '**no**'} |")
        if row.get("ours_e2e") and row.get("peer_e2e"):
            speed = row["peer_e2e"] / row["ours_e2e"]
            acc_ok = (row.get("ours_acc") or 0) >= (row.get("peer_acc") or 0) - 1e-9
            L.append(f"| end to end ≥ {TARGETS['e2e']:g}× faster, accuracy ≥ peer's | {lab} | "
                     f"{row['ours_e2e']:.1f} s, acc {_f(row.get('ours_acc'), '{:.4f}')} | "
                     f"{row['peer_e2e']:.1f} s, acc {_f(row.get('peer_acc'), '{:.4f}')} | "
                     f"{row['ours_e2e'] / row['peer_e2e']:.3f} ({speed:.1f}× faster) | "
                     f"{'yes' if speed >= TARGETS['e2e'] and acc_ok else '**no**'} |")
        if case.get("n_types", 0) and "peer_mem_est" in row and row.get("ours_mem"):
            est, how = row["peer_mem_est"], row["peer_mem_how"]
            peer_txt = _mib(est) + ("" if how == "measured" else f" ({how})")
            if row.get("peer_failed"):
                peer_txt = f"> {_mib(results['mem_cap_mb'])} (killed at the cap); ≈ {_mib(est)} extrapolated"
            r = _ratio(row["ours_mem"], est)
            bound = _ratio(row["ours_mem"], results["mem_cap_mb"]) if row.get("peer_failed") else None
            rtxt = _f(r, "{:.3f}") + (f" (≤ {bound:.3f} vs the cap)" if bound else "")
            met = r is not None and r <= TARGETS["memory"]
            L.append(f"| wide-marker peak memory ≤ {TARGETS['memory']:g} × peer's | {lab} | {_mib(row['ours_mem'])} | "
                     f"{peer_txt} | {rtxt} | {'yes' if met else '**no**'} |")
    L.append("")

    # ---- full table
    L.append("## All figures\n")
    L.append("`s/epoch` is the steady-state time of one epoch (median over epochs after the first), "
             "training pass plus the validation pass, early stopping off, the same number of epochs on "
             "both sides. `terms/s` = training cells × markers × types / (s/epoch). Peak memory is the "
             "process's peak RSS (`ru_maxrss`, each measurement in its own process; on CUDA: "
             "`torch.cuda.max_memory_allocated`); `Δ` is the peak minus the RSS after importing torch "
             "and the implementation. End to end = model construction + fit with early stopping + "
             "prediction on all cells, each side's defaults (ours: one restart).\n")
    L.append("| case (cells × markers × types) | metric | ours | peer | ours/peer |")
    L.append("|---|---|---|---|---|")
    for name, row in s["cases"].items():
        case = results["cases"][name]
        lab = f"{name}: {_case_label(case)}"
        ep_o = (case.get("ours_epochs") or {}).get("epochs_run")
        ep_p = (case.get("peer_epochs") or {}).get("epochs_run")
        if case.get("memory"):
            o_first = ((case.get("ours_epochs") or {}).get("epoch_times") or [None])[0]
            L.append(f"| {lab} | first epoch, s (incl. warm-up/compile; memory run) | {_f(o_first)} | "
                     f"{'1 step only' if not row['peer_failed'] else row['peer_failed']} | – |")
        else:
            L.append(f"| {lab} | s/epoch ({ep_o} / {ep_p} epochs) | {_f(row['ours_spe'])} | "
                     f"{_f(row['peer_spe']) if not row['peer_failed'] else row['peer_failed']} | "
                     f"{_f(_ratio(row['ours_spe'], row['peer_spe']))} |")
            L.append(f"| | terms/s | {_si(row['ours_tps'])} | {_si(row['peer_tps'])} | "
                     f"{_f(_ratio(row['ours_tps'], row['peer_tps']))} |")
        L.append(f"| | peak memory | {_mib(row['ours_mem'])} | "
                 f"{_mib(row['peer_mem']) if not row['peer_failed'] else '> ' + _mib(results['mem_cap_mb'])} | "
                 f"{_f(_ratio(row['ours_mem'], row['peer_mem']))} |")
        L.append(f"| | Δ peak memory (training) | {_mib(row['ours_inc'])} | {_mib(row['peer_inc'])} | "
                 f"{_f(_ratio(row['ours_inc'], row['peer_inc']))} |")
        if "ours_e2e" in row:
            L.append(f"| | end to end, s (epochs) | {_f(row['ours_e2e'], '{:.1f}')} ({row['ours_ep']}) | "
                     f"{_f(row['peer_e2e'], '{:.1f}')} ({row['peer_ep']}) | "
                     f"{_f(_ratio(row['ours_e2e'], row['peer_e2e']))} |")
            oe = case.get("ours_e2e") or {}
            pe = case.get("peer_e2e") or {}
            of = (oe.get("epoch_times") or [None])[0]
            pf = (pe.get("epoch_times") or [None])[0]
            L.append(f"| | of which first epoch (incl. warm-up/compile), s | {_f(of, '{:.1f}')} | "
                     f"{_f(pf, '{:.1f}')} | – |")
            if row.get("peer_e2e_400"):
                L.append(f"| | end to end, peer projected to its default 400 epochs | – | "
                         f"{row['peer_e2e_400']:.0f} | {_f(_ratio(row['ours_e2e'], row['peer_e2e_400']))} |")
            L.append(f"| | accuracy vs truth | {_f(row['ours_acc'], '{:.4f}')} | {_f(row['peer_acc'], '{:.4f}')} | "
                     f"{_f(_ratio(row['ours_acc'], row['peer_acc']), '{:.4f}')} |")
    L.append("")

    # ---- memory sweep
    for name, case in results["cases"].items():
        if not (case.get("ours_sweep") or case.get("peer_sweep")):
            continue
        L.append(f"### Peak memory against minibatch size ({name}: {_case_label(case)})\n")
        L.append("One training step for the peer (`limit_train_batches=1`, then one validation step), "
                 "a whole epoch for ours.\n")
        L.append("| minibatch | ours peak | peer peak |")
        L.append("|---|---|---|")
        sweeps: dict = {}
        for impl in ("ours", "peer"):
            for srec in case.get(f"{impl}_sweep", []):
                sweeps.setdefault(srec["batch_size"], {})[impl] = srec
            main = case.get(f"{impl}_epochs")
            if main:
                sweeps.setdefault(bs, {})[impl] = main
        for b in sorted(sweeps):
            cells = []
            for impl in ("ours", "peer"):
                r = sweeps[b].get(impl)
                if r is None:
                    cells.append("–")
                elif r.get("failed"):
                    cells.append(f"> {_mib(results['mem_cap_mb'])} ({r['failed']})")
                else:
                    cells.append(_mib(mem_mb(r, dev)))
            L.append(f"| {b} | {cells[0]} | {cells[1]} |")
        L.append("")

    # ---- threads
    if results.get("threads"):
        L.append(_threads_section(results["threads"]))

    # ---- scaling
    if results.get("scaling"):
        L.append("## How our time per epoch grows\n")
        L.append("Each axis varied alone around the base case, ours only, "
                 "same minibatch size. The exponent is the log-log slope over the three points "
                 "(1 = linear).\n")
        L.append("| axis | cells × markers × types | s/epoch | terms/s |")
        L.append("|---|---|---|---|")
        by_axis: dict = {}
        order = {"cells": 0, "markers": 1, "types": 2}
        for pt in sorted(results["scaling"], key=lambda q: (order.get(q["axis"], 9), q["factor"])):
            by_axis.setdefault(pt["axis"], []).append(pt)
            L.append(f"| {pt['axis']} ×{pt['factor']:g} | {pt['n_cells']:,} × {pt['n_markers']} × {pt['n_types']} | "
                     f"{_f(pt['s_per_epoch'])} | {_si(pt['terms_per_s'])} |")
        L.append("")
        exps = []
        for axis, pts in by_axis.items():
            key = {"cells": "n_cells", "markers": "n_markers", "types": "n_types"}[axis]
            good = [(math.log(p[key]), math.log(p["s_per_epoch"])) for p in pts if p.get("s_per_epoch")]
            fit = _fit_linear([g[0] for g in good], [g[1] for g in good])
            if fit:
                exps.append(f"{axis}: {fit[0]:.2f}")
        if exps:
            L.append("Growth exponents of s/epoch: " + "; ".join(exps) + ".\n")

    if results.get("rbf"):
        L.append("## Peak memory against the number of RBF centres B\n")
        L.append(rbf_markdown(results["rbf"]))

    L.append("<!-- PLOT -->\n")
    L.append("## Method\n")
    L.append(
        "* Data: simulated from the CellAssign model itself (`cellassign_nf.simulate`, with the settings "
        "of `benchmarks/harness.py`): negative binomial counts given the true type, markers over-expressed "
        "by a log-normal fold change around 3.5×, 10% of markers shared by a second type, per-cell "
        "log-normal size factors; 300 non-marker genes are simulated too and `obs['size_factor']` is total "
        "counts over all genes / mean. Both sides get the same marker-only AnnData and the same size "
        "factors.\n"
        "* Each figure comes from a separate subprocess (ours under `.venv`, the peer under `.venv-bench`), "
        "so peaks never mix; the harness also samples RSS and kills a worker over the memory cap "
        f"({_mib(results['mem_cap_mb'])} here), reporting the peer's peak as above the cap and, from a sweep "
        "of smaller minibatches, a linear extrapolation.\n"
        "* Per-epoch figures: early stopping off, a validation pass every epoch on both sides (the peer "
        "with `check_val_every_n_epoch=1`), the first epoch dropped as warm-up. Ours: epochs timed from "
        "the validation passes; the peer: a Lightning callback.\n"
        f"* End to end: each side's defaults (early stopping; ours with `n_restarts=1`; learning rates "
        f"ours {_lr(results, 'ours')}, peer {_lr(results, 'peer')}), the same epoch cap on both sides "
        f"({_cap(results)}; both tools default to 400); accuracy = argmax of the predicted probabilities "
        "against the simulated type. Where the peer ran into the cap, the table also gives its time "
        "projected to its default 400 epochs (setup + 400 × its s/epoch + prediction).\n"
        "* Ours runs its default path (`fuse='auto'`: the fused C kernel on the CPU, compiled when the "
        "package was installed; the training step replayed as a CUDA graph on a GPU); every worker "
        "starts with empty compile caches (`NUMBA_CACHE_DIR`, `TORCHINDUCTOR_CACHE_DIR`), as a fresh "
        "container would, so the first epoch includes any warm-up there is.\n"
        "* Peer memory grows with the number of RBF centres B (it materialises cells × genes × types × B "
        "tensors); ours does not: `python benchmarks/rbf_memory.py`.\n")
    return "\n".join(L) + "\n"


def _threads_section(runs: list[dict]) -> str:
    """Ours at the scaling base case on 1..nproc threads (fused kernel), and the plain chain."""
    r0 = runs[0]
    lines = [f"## Threads ({r0['n_cells']:,} × {r0['n_markers']} × {r0['n_types']}, ours only)\n",
             "`--threads N` (the pipeline passes `task.cpus`): the fused kernel's threads; `fuse=off` is the "
             "plain PyTorch chain on the same threads.\n",
             "| threads | path | s/epoch | speed-up over 1 thread |", "|---|---|---|---|"]
    one = next((r["s_per_epoch"] for r in runs if r["threads"] == 1 and r["fuse"] == "auto"), None)
    for r in runs:
        path = "fused kernel (default)" if r["fuse"] == "auto" else "plain chain (`fuse=off`)"
        up = _f(_ratio(one, r["s_per_epoch"]), "{:.2f}×") if r["fuse"] == "auto" else "–"
        lines.append(f"| {r['threads']} | {path} | {_f(r['s_per_epoch'])} | {up} |")
    return "\n".join(lines) + "\n"


def _lr(results, impl):
    for case in results["cases"].values():
        for key in (f"{impl}_e2e", f"{impl}_epochs"):
            rec = case.get(key) or {}
            if rec.get("lr") is not None:
                return f"{rec['lr']:g}"
    return "default"


def _cap(results):
    caps = {(c.get(f"{i}_e2e") or {}).get("max_epochs") for c in results["cases"].values() for i in ("ours", "peer")}
    caps.discard(None)
    return "max " + "/".join(str(c) for c in sorted(caps)) + " epochs" if caps else "no cap"


def render_plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = summarise(results)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    # (a) seconds per epoch per case
    ax = axes[0]
    names = [n for n in s["cases"] if not results["cases"][n].get("memory")]
    xs = range(len(names))
    o = [s["cases"][n]["ours_spe"] or 0 for n in names]
    p = [s["cases"][n]["peer_spe"] or 0 for n in names]
    ax.bar([x - 0.2 for x in xs], o, 0.4, label="ours")
    ax.bar([x + 0.2 for x in xs], p, 0.4, label="scvi-tools")
    ax.set_xticks(list(xs))
    ax.set_xticklabels([f"{n}\n{_case_label(results['cases'][n])}" for n in names], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("seconds per epoch")
    ax.set_title(f"Time per epoch (minibatch {results['batch_size']}, {results['device']})")
    ax.legend()
    # (b) peak memory per case
    ax = axes[1]
    names = list(s["cases"])
    xs = range(len(names))
    om = [(s["cases"][n]["ours_mem"] or 0) / 1024 for n in names]
    pm = [((s["cases"][n]["peer_mem"] or s["cases"][n].get("peer_mem_est") or 0)) / 1024 for n in names]
    ax.bar([x - 0.2 for x in xs], om, 0.4, label="ours")
    bars = ax.bar([x + 0.2 for x in xs], pm, 0.4, label="scvi-tools")
    for n, b in zip(names, bars):
        if s["cases"][n].get("peer_failed"):
            b.set_hatch("//")
            b.set_alpha(0.6)
    ax.axhline(results["mem_cap_mb"] / 1024, color="grey", ls=":", lw=1, label="harness memory cap")
    ax.set_xticks(list(xs))
    ax.set_xticklabels([f"{n}" for n in names])
    ax.set_ylabel("peak memory, GiB")
    ax.set_title("Peak memory (hatched: extrapolated, killed at cap)")
    ax.legend(fontsize=8)
    # (c) scaling
    ax = axes[2]
    for axis in ("cells", "markers", "types"):
        pts = [pt for pt in results.get("scaling", []) if pt["axis"] == axis and pt.get("s_per_epoch")]
        if pts:
            ax.plot([pt["factor"] for pt in pts], [pt["s_per_epoch"] for pt in pts], "o-", label=axis)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("factor of the base size")
    ax.set_ylabel("ours: seconds per epoch")
    ax.set_title("Ours: growth with cells, markers, types")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
