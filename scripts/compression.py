"""The compression report: what each network costs and gives, its ratios to the teacher, PSNR against latency.

Costs: parameters, FLOPs, peak memory, latency against a convolution roofline measured in the same run; gains:
PSNR / SSIM from an evaluation folder, or scored here in every inference mode on a prepared data set; the ratios of
each network to the first (the teacher), and a PSNR-against-latency plot with the Pareto front.

Usage::

    python -m scripts.compression --checkpoints TEACHER.pt STUDENT.pt [KD.pt ...] [--names ...]
        [--eval-dir EVAL_DIR] [--data-root DATA --acc 4x [--split test]] --out-dir DIR [--sizes 256 320]
        [--throughput-batch 8] [--repeats 7] [--coils 8] [--timings-from EARLIER_DIR]

Latency is per slice, median and range over ``--repeats`` interleaved rounds (every network once per round, so a
burst of load from other processes hits all alike), at batch 1 and ``--throughput-batch``, each ``--sizes``, on
1 thread and on all (and on CUDA where present), in the fastest exact mode (``torch.inference_mode``, float32,
the memory layout evaluate.py takes). Each cell's fraction of the roofline compares the FLOPs the network does
per second with a 3x3 32 -> 32 forward convolution at the same batch, size, threads and device, timed in the same
interleaved rounds as the networks (scripts/benchmark.py's probe), its median over the rounds. FLOPs are FlopCounterMode's (the convolutions; models/inference/cost.py).
``--eval-dir``: evaluate.py's folder; a network's PSNR / SSIM are its row in summary.json, matched by checkpoint
path, else by name. ``--data-root`` and ``--acc``: a prepared data set whose split (evaluate.py's default, or
``--split``) every network reconstructs in every inference mode, through evaluate.py's forward and metrics on the
CPU (models/evaluation/modes.py): per network and mode its PSNR and SSIM, their change against the exact mode and the
largest per-slice max |difference| of the outputs. The exact mode's figures are evaluate.py's for the same
``--batch-size``; without ``--eval-dir`` they are the table's PSNR / SSIM. ``--timings-from``: take the latency
table, profile and machine of an earlier report of the same networks instead of timing again (to add the quality
columns on a machine that is busy now).

Outputs in ``--out-dir`` (all or nothing): ``compression.md`` (the machine, the table, the ratios),
``compression.json`` (every figure), ``compression.png`` (PSNR, or FLOPs without --eval-dir, against latency at
the largest size, batch 1, all threads).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

if not __package__:  # run by path: the repository root, which holds the packages, is not importable
    print("error: run it as a module from the repository root: python -m scripts.compression ...", file=sys.stderr)
    sys.exit(2)

import torch  # noqa: E402

from data.outputs import staged, write_json, write_text  # noqa: E402
from data.dataset import build_dataset  # noqa: E402
from data.fingerprint import split_listing  # noqa: E402
from data.masks import acc_type  # noqa: E402
from models.checkpoints.format import load_model  # noqa: E402
from models.evaluation.modes import mode_quality  # noqa: E402
from models.evaluation.provenance import check_scored_split, check_trained_on, default_split  # noqa: E402
from models.inference.cost import (count_parameters, forward_flops, pareto_front, peak_memory_bytes,  # noqa: E402
                                   synthetic_inputs)
from models.inference.forward import INFERENCE_MODES, for_inference, inference_network  # noqa: E402
from models.nets.registry import describe_arch, image_channels_of, reconstructor  # noqa: E402
from scripts.benchmark import conv_probe, profile_category, roofline, time_interleaved  # noqa: E402
from models.evaluation.results import default_names  # noqa: E402
from utils import CliParser, UserError, describe_machine, machine, run_cli  # noqa: E402

STAGE_PREFIX = ".compression-"
ROUNDING_MODES = ("exact", "fused")  # the modes equal to the training forward up to float32 rounding
ROOFLINE_PROBE_ROUNDS = 2  # rounds of the layout choice; the roofline itself is timed in the networks' rounds
ROOFLINE = "roofline"  # its entry among the interleaved calls (not a network name: names come from checkpoints)


def network_names(paths: list[Path], checkpoints: list[dict], given: list[str] | None) -> list[str]:
    """``--names``, else each checkpoint's run_name, else its folder's name; repeats get ``-2``, ``-3``."""
    if given is not None:
        if len(given) != len(paths) or len(set(given)) != len(given):
            raise UserError(f"--names needs {len(paths)} different names, one per checkpoint")
        return given
    return default_names(paths, checkpoints, reserved=())


def quality(eval_dir: Path | None, paths: list[Path], names: list[str]) -> dict[str, dict[str, float]]:
    """``{name: {"PSNR": mean, "SSIM": mean}}`` from evaluate.py's summary.json, by checkpoint path, else name."""
    if eval_dir is None:
        return {}
    try:
        summary = json.loads((eval_dir / "summary.json").read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"--eval-dir {eval_dir}: no readable summary.json ({exc}); pass a folder evaluate.py "
                        "wrote") from exc
    by_path = {str(Path(p).resolve()): model for model, p in (summary.get("checkpoints") or {}).items()}
    found = {}
    for path, name in zip(paths, names):
        model = by_path.get(str(path.resolve()), name)
        stats = summary.get(model)
        if isinstance(stats, dict) and "PSNR" in stats:
            found[name] = {metric: float(stats[metric]["mean"]) for metric in ("PSNR", "SSIM") if metric in stats}
    if not found:
        raise UserError(f"--eval-dir {eval_dir}: none of the checkpoints was evaluated there (it holds "
                        f"{', '.join(m for m in summary.get('checkpoints') or {})}); pass the folder that scored them")
    return found


def settings(devices: list[torch.device], sizes: list[int], batches: list[int]) -> list[dict]:
    """Every measured cell: device, threads (1 and all on a CPU), size, batch."""
    cells = []
    all_threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    for device in devices:
        for threads in ((1, all_threads) if device.type == "cpu" else (None,)):
            for size in sizes:
                for batch in batches:
                    cells.append({"device": device.type, "threads": threads, "size": size, "batch": batch})
    return cells


def network_inputs(kinds: dict[str, tuple[int, int | None]], name: str, size: int, batch: int) -> tuple:
    """:func:`models.cost.synthetic_inputs` for network ``name``; kinds: name -> (image channels, coils or None
    for single-coil networks)."""
    channels, coils = kinds[name]
    return synthetic_inputs(size, batch, channels, coils=coils)


def measure(nets: dict[str, torch.nn.Module], kinds: dict[str, tuple], cells: list[dict], repeats: int,
            modes: dict[str, tuple[str, str]]) -> list[dict]:
    """Latency rows: one per cell and network in each mode (``modes``: entry name -> (network, mode of
    models/inference/forward.py)), with seconds per slice (median, min, max), FLOP/s (the exact network's FLOPs: a mode
    changes how, not what, is computed) and the fraction of the cell's roofline."""
    rows = []
    counted: dict[tuple, int] = {}  # FLOPs do not depend on the threads or the mode
    saved_threads = torch.get_num_threads()
    try:
        for cell in cells:
            device = torch.device(cell["device"])
            if cell["threads"]:
                torch.set_num_threads(cell["threads"])
            size, batch = cell["size"], cell["batch"]
            calls, flops = {}, {}
            for entry, (name, mode) in modes.items():
                ready = for_inference(nets[name], device, (size, size), batch)
                inputs = tuple(t.to(device) for t in network_inputs(kinds, name, size, batch))
                key = (name, device.type, size, batch)
                if key not in counted:
                    counted[key] = forward_flops(ready, *inputs)
                flops[entry] = counted[key]
                ready = inference_network(ready, mode)

                def call(ready=ready, inputs=inputs):
                    with torch.inference_mode():
                        ready(*inputs)
                calls[entry] = call
            # The roofline convolution takes its turn in every round with the networks, so its figure and theirs
            # share the same moments of load (a roofline timed apart once came out at half speed, fractions > 1).
            layout = roofline(batch, size, device, torch.float32, False, rounds=ROOFLINE_PROBE_ROUNDS).layout
            probe, probe_flops = conv_probe(batch, size, device, torch.float32, False, layout)
            timings = time_interleaved({**calls, ROOFLINE: probe}, repeats, device)
            roof = statistics.median(probe_flops / seconds / 1e9 for seconds in timings.pop(ROOFLINE).seconds)
            for name, timing in timings.items():
                median, fastest, slowest = timing.per_slice(batch)
                gflops = flops[name] / batch / median / 1e9
                rows.append({**cell, "network": name, "mode": modes[name][1], "median_s": median, "min_s": fastest,
                             "max_s": slowest,
                             "gflops": gflops, "roofline_gflops": roof, "roofline_layout": layout,
                             "of_roofline": gflops / roof})
    finally:
        torch.set_num_threads(saved_threads)
    return rows


WIDE_CONVOLUTIONS = "32 -> 32 convolutions"
NARROW_CONVOLUTIONS = "1-channel convolutions (first and last of each block)"
PROFILE_CALLS = 3


def profile(nets: dict[str, torch.nn.Module], kinds: dict[str, tuple], modes: dict[str, tuple[str, str]],
            size: int) -> dict[str, dict]:
    """Where a batch-1 forward pass at ``size`` spends its time, on all threads, per network and mode: seconds
    per forward of each of scripts/benchmark.py's op categories, the convolutions split into the 32 -> 32 ones
    (the work the roofline measures) and the 1-channel ones, plus the wall-clock time and the time outside every
    op (Python, the profiler's own cost)."""
    found = {}
    for entry, (name, mode) in modes.items():
        ready = inference_network(for_inference(nets[name], torch.device("cpu"), (size, size), 1), mode)
        inputs = network_inputs(kinds, name, size, 1)
        with torch.inference_mode():
            ready(*inputs)  # kernel selection, compilation
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
                start = time.perf_counter()
                for _ in range(PROFILE_CALLS):
                    ready(*inputs)
                wall = (time.perf_counter() - start) / PROFILE_CALLS
        seconds: dict[str, float] = {}
        for event in prof.key_averages(group_by_input_shape=True):
            category = profile_category(event.key)
            if category == "convolutions":
                shapes = [shape for shape in event.input_shapes if len(shape) == 4]
                wide = len(shapes) >= 2 and shapes[0][1] == 32 and shapes[1][0] == 32
                category = WIDE_CONVOLUTIONS if wide else NARROW_CONVOLUTIONS
            seconds[category] = seconds.get(category, 0.0) + event.self_cpu_time_total / 1e6 / PROFILE_CALLS
        inside = sum(seconds.values())
        found[entry] = {"wall_s": wall, "outside_ops_s": max(wall - inside, 0.0),
                        "seconds": dict(sorted(seconds.items(), key=lambda item: -item[1]))}
    return found


def profile_text(profiles: dict[str, dict], size: int, threads: int) -> list[str]:
    """compression.md's profile section."""
    lines = ["", f"Profile of one batch-1 forward at {size} x {size}, {threads} threads (torch.profiler, self CPU "
             f"time per op category, mean of {PROFILE_CALLS} calls; wall-clock under the profiler):", ""]
    for entry, found in profiles.items():
        wall = found["wall_s"]
        parts = [f"{what} {s * 1e3:.1f} ms ({s / wall:.0%})" for what, s in found["seconds"].items() if s >= 5e-4]
        lines.append(f"- {entry}: {wall * 1e3:.1f} ms; " + ", ".join(parts)
                     + f"; outside every op {found['outside_ops_s'] * 1e3:.1f} ms")
    return lines


def static_costs(nets: dict[str, torch.nn.Module], kinds: dict[str, tuple], sizes: list[int]) -> dict[str, dict]:
    """Parameters, FLOPs per slice and peak memory (batch 1) per network and size."""
    costs = {}
    for name, net in nets.items():
        ready = for_inference(net, torch.device("cpu"), (sizes[-1], sizes[-1]), 1)
        costs[name] = {"parameters": count_parameters(net), "flops": {}, "peak_bytes": {}}
        for size in sizes:
            inputs = network_inputs(kinds, name, size, 1)
            costs[name]["flops"][str(size)] = forward_flops(ready, *inputs)
            costs[name]["peak_bytes"][str(size)] = peak_memory_bytes(ready, *inputs)
    return costs


def ratios(costs: dict, rows: list[dict], scores: dict, reference: str, cell: dict) -> dict[str, dict]:
    """Each network against ``reference`` (the first): parameters and FLOPs as reference / network (the
    compression), latency as reference / network (the speed-up) in ``cell``, in the exact mode and
    (``speed_up_by_mode``) in each mode against the reference in the same mode, PSNR and SSIM as differences."""
    latency = {row["network"]: row["median_s"] for row in rows
               if all(row[key] == value for key, value in cell.items())}
    modes = sorted({row["mode"] for row in rows if row["mode"] != "exact"})
    size = str(cell["size"])
    out = {}
    for name, cost in costs.items():
        entry = {"parameters": costs[reference]["parameters"] / cost["parameters"],
                 "flops": costs[reference]["flops"][size] / cost["flops"][size],
                 "speed_up": latency[reference] / latency[name] if name in latency else None,
                 "speed_up_by_mode": {mode: latency[f"{reference}+{mode}"] / latency[f"{name}+{mode}"]
                                      for mode in modes if f"{name}+{mode}" in latency}}
        for metric in ("PSNR", "SSIM"):
            if name in scores and reference in scores and metric in scores[name]:
                entry[f"{metric}_difference"] = scores[name][metric] - scores[reference][metric]
        out[name] = entry
    return out


def table(report: dict, title: str = "# Compression report", image: str | None = "compression.png") -> str:
    """compression.md's text (``report``: compression.json's), under ``title``, the plot linked as ``image``
    (None: not linked)."""
    names, costs, scores = report["networks"], report["costs"], report["quality"]
    sizes = report["sizes"]
    lines = [title, "", f"Measured on: {report['machine_line']}", "",
             *([f"Latency and profile: from {report['timings_from']} (that run's figures, not timed again).", ""]
               if report.get("timings_from") else []),
             f"Latency per slice: median (min-max) over {report['repeats']} interleaved rounds, "
             "torch.inference_mode, float32. FLOPs: torch.utils.flop_counter (convolutions). Fraction: the "
             "network's FLOP/s over a 3x3 32->32 forward convolution's at the same batch, size and threads, "
             "timed in the same interleaved rounds (median over the rounds).", ""]
    head = ["network", "parameters", *(f"GFLOP/slice {s}" for s in sizes), *(f"peak MB {s}" for s in sizes)]
    if scores:
        head += ["PSNR", "SSIM"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in names:
        cost = costs[name]
        cells = [f"{name} ({report['describe'][name]})", f"{cost['parameters']:,}",
                 *(f"{cost['flops'][str(s)] / 1e9:.2f}" for s in sizes),
                 *(f"{cost['peak_bytes'][str(s)] / 2 ** 20:.0f}" for s in sizes)]
        if scores:
            cells += [f"{scores[name]['PSNR']:.2f}" if name in scores else "-",
                      f"{scores[name]['SSIM']:.4f}" if name in scores and "SSIM" in scores[name] else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    entries = list(report["modes"])
    lines += ["", "| device | threads | size | batch | " + " | ".join(entries) + " |",
              "|" + "---|" * (4 + len(entries))]
    by_cell: dict[tuple, dict[str, dict]] = {}
    for row in report["latency"]:
        by_cell.setdefault((row["device"], row["threads"], row["size"], row["batch"]), {})[row["network"]] = row
    for (device, threads, size, batch), cell in by_cell.items():
        texts = [f"{r['median_s'] * 1e3:.1f} ms ({r['min_s'] * 1e3:.1f}-{r['max_s'] * 1e3:.1f}), "
                 f"{r['gflops']:.0f} GFLOP/s, {r['of_roofline']:.2f} of {r['roofline_gflops']:.0f}"
                 for r in (cell[entry] for entry in entries)]
        lines.append(f"| {device} | {threads or '-'} | {size} | {batch} | " + " | ".join(texts) + " |")
    reference = names[0]
    lines += ["", f"Against {reference} (parameters and FLOPs: {reference} / network; speed-up at "
              f"{report['ratio_cell_text']}; in another mode: against {reference} in that mode):", "",
              "| network | parameters | FLOPs | speed-up | speed-up in other modes | PSNR | SSIM |",
              "|---|---|---|---|---|---|---|"]
    for name in names:
        r = report["ratios"][name]
        lines.append(f"| {name} | {r['parameters']:.2f}:1 | {r['flops']:.2f}:1 | "
                     f"{r['speed_up']:.2f}x | "
                     f"{', '.join(f'{m} {v:.2f}x' for m, v in r['speed_up_by_mode'].items()) or '-'} | "
                     f"{r.get('PSNR_difference', float('nan')):+.2f} dB | "
                     f"{r.get('SSIM_difference', float('nan')):+.4f} |")
    if report.get("mode_quality"):
        lines += mode_quality_text(report["mode_quality"], names)
    if report.get("profile"):
        lines += profile_text(report["profile"], report["ratio_cell"]["size"], report["ratio_cell"]["threads"])
    scored = [mode for per_mode in (report.get("mode_quality") or {}).get("networks", {}).values() for mode in per_mode]
    lines += ["", "Modes (models/inference/forward.py): " + "; ".join(
        f"{mode}: {INFERENCE_MODES[mode][0]}" for mode in dict.fromkeys([*report["modes"].values(), *scored])) + ".",
              *(["", f"![latency against quality]({image})"] if image else []), ""]
    return "\n".join(lines)


def _change(value: float, unit: str = "") -> str:
    """A signed change, in fixed point unless it is below what fixed point shows (fused: about 1e-6 dB)."""
    text = f"{value:+.4f}" if value == 0 or abs(value) >= 1e-3 else f"{value:+.1e}"
    return text + unit


def mode_quality_text(found: dict, names: list[str]) -> list[str]:
    """compression.md's section of each mode's quality (``found``: compression.json's ``mode_quality``)."""
    slices = {mode["slices"] for per_mode in found["networks"].values() for mode in per_mode.values()}
    lines = ["", f"Quality in each mode: {found['test_set']} at {found['acc']}, {', '.join(map(str, sorted(slices)))} "
             f"slices, evaluate.py's forward (batch {found['batch_size']}) and metrics, scored on "
             f"{found['machine_line']}. Change: the mode's mean minus the exact mode's; |difference|: "
             "max |mode - exact| of the output magnitudes per slice, the largest over the slices, in network units "
             "and as a fraction of the slice's maximum of the exact output:", "",
             "| network | mode | PSNR | SSIM | PSNR change | SSIM change | max abs difference | of the maximum |",
             "|---|---|---|---|---|---|---|---|"]
    for name in names:
        for mode, q in found["networks"].get(name, {}).items():
            if mode == "exact":
                changes = ["-"] * 4
            else:
                changes = [_change(q["PSNR_change"], " dB"), _change(q["SSIM_change"]),
                           f"{q['max_abs_difference']:.1e}", f"{q['max_relative_difference']:.1e}"]
            lines.append(f"| {name} | {mode} | {q['PSNR']:.2f} | {q['SSIM']:.4f} | " + " | ".join(changes) + " |")
    return lines


def plot(report: dict, path: Path) -> None:
    """Quality (PSNR, else GFLOP per slice) against latency in the ratio cell, the Pareto front drawn through."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    cell = report["ratio_cell"]
    latency = {row["network"]: row["median_s"] * 1e3 for row in report["latency"]
               if all(row[key] == value for key, value in cell.items())}
    # Every network in the exact mode and in the modes equal to it up to float32 rounding: their PSNR is the
    # exact one (a rounding-level difference would put the slower exact network on the front). bf16 changes the
    # output beyond that: it is drawn only with its own PSNR (--data-root).
    by_mode = (report.get("mode_quality") or {}).get("networks", {})
    names = [entry for entry, mode in report["modes"].items()
             if mode in ROUNDING_MODES or mode in by_mode.get(entry.split("+")[0], {})]
    base = {entry: entry.split("+")[0] for entry in names}
    if by_mode:
        scored = {n: "exact" if report["modes"][n] in ROUNDING_MODES else report["modes"][n] for n in names}
        names = [n for n in names if scored[n] in by_mode.get(base[n], {})]
        values, label = [by_mode[base[n]][scored[n]]["PSNR"] for n in names], "PSNR (dB)"
    elif report["quality"]:
        names = [n for n in names if base[n] in report["quality"]]
        values, label = [report["quality"][base[n]]["PSNR"] for n in names], "PSNR (dB)"
    else:
        values = [-report["costs"][base[n]]["flops"][str(cell["size"])] / 1e9 for n in names]
        label = "- GFLOP per slice (higher is cheaper)"
    points = [(latency[n], v) for n, v in zip(names, values)]
    front = pareto_front(points)
    figure, axes = plt.subplots(figsize=(5.5, 4))
    axes.scatter([p[0] for p in points], [p[1] for p in points], color="tab:blue")
    axes.plot([points[i][0] for i in front], [points[i][1] for i in front], color="tab:orange", label="Pareto front")
    for name, point in zip(names, points):
        axes.annotate(name, point, textcoords="offset points", xytext=(4, 4), fontsize=8)
    axes.set_xlabel(f"latency per slice (ms), {report['ratio_cell_text']}")
    axes.set_ylabel(label)
    axes.legend(loc="lower right")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = CliParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=Path, nargs="+", required=True,
                        help="the teacher first (the ratios' reference), then students")
    parser.add_argument("--names", nargs="+", help="one name per checkpoint (default: run_name)")
    parser.add_argument("--eval-dir", type=Path, help="evaluate.py's folder that scored them (PSNR, SSIM)")
    parser.add_argument("--data-root", type=Path,
                        help="a prepared data set (data/prepare.py) to reconstruct in every inference mode and score "
                             "(PSNR, SSIM, change against exact); needs --acc")
    parser.add_argument("--acc", type=acc_type, help="its acceleration, e.g. 4x")
    parser.add_argument("--split", default=None,
                        help="its split (default: evaluate.py's, test when DATA_ROOT has it, else validation)")
    parser.add_argument("--mask", type=Path, help="mask .npy (default: DATA_ROOT/mask_{acc}.npy)")
    parser.add_argument("--batch-size", type=int, default=4,
                        help="slices per forward when scoring (evaluate.py's default; the exact mode's figures equal "
                             "evaluate.py's at the same batch size)")
    parser.add_argument("--timings-from", type=Path, metavar="DIR",
                        help="an earlier report's --out-dir of the same networks: its latency table, profile and "
                             "machine are kept (--sizes, --throughput-batch, --repeats, --modes, --device and "
                             "--profile are then its own), the rest is computed again")
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 320], help="slice sizes (square)")
    parser.add_argument("--throughput-batch", type=int, default=8, help="the batch of the throughput rows")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds per cell")
    parser.add_argument("--modes", nargs="+", choices=tuple(INFERENCE_MODES), default=["exact", "fused"],
                        help="inference modes to time (models/inference/forward.py); exact is the training forward, "
                             "the others are named {network}+{mode} in the latency table")
    parser.add_argument("--device", choices=("auto", "cpu"), default="auto",
                        help="auto: the CPU, and CUDA too where present")
    parser.add_argument("--profile", action="store_true",
                        help="also profile a batch-1 forward at the largest size on all threads, per network and mode")
    parser.add_argument("--coils", type=int, default=None, metavar="N",
                        help="run multi-coil networks on N coils (default: as many as each was trained on); "
                             "single-coil networks stay single-coil")
    parser.add_argument("--overwrite", action="store_true")
    return parser.parse_args(argv)


TIMING_KEYS = ("machine", "machine_line", "sizes", "repeats", "modes", "latency", "ratio_cell", "ratio_cell_text",
               "profile")


def earlier_timings(folder: Path, names: list[str], parameters: dict[str, int]) -> dict:
    """The timing entries (:data:`TIMING_KEYS`) of the report in ``folder`` (``--timings-from``), which must be of
    the same networks: the same names, in order, with the same parameter counts."""
    try:
        earlier = json.loads((folder / "compression.json").read_text())
        timings = {key: earlier[key] for key in TIMING_KEYS}
        found = {name: earlier["costs"][name]["parameters"] for name in earlier["networks"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"--timings-from {folder}: no readable compression.json ({exc}); pass a folder "
                        "python -m scripts.compression wrote") from exc
    if list(found) != names or found != parameters:
        def listed(counts: dict[str, int]) -> str:
            return ", ".join(f"{name} ({count:,} parameters)" for name, count in counts.items())
        raise UserError(f"--timings-from {folder} timed {listed(found)}, not {listed(parameters)}; pass the report "
                        "of these checkpoints, or time them again without --timings-from")
    return timings


def scored_data(args: argparse.Namespace, paths: list[Path]):
    """``(dataset, split, loaded checkpoints)`` for ``--data-root``: the split evaluate.py would score and the
    checkpoints loaded for its image type and coils, with evaluate.py's refusals (a split that shares slices with
    training, a checkpoint trained at another acceleration or size, or on these files)."""
    if args.acc is None:
        raise UserError("--data-root needs --acc, the acceleration to score (e.g. --acc 4x)")
    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size} must be at least 1")
    split = args.split or default_split(args.data_root, args.acc)
    dataset = build_dataset(args.data_root, split, [args.acc], {args.acc: str(args.mask)} if args.mask else None)
    loaded = [load_model(path, "--checkpoints", dataset.image, dataset.coils) for path in paths]
    check_scored_split(args.data_root, split, args.acc)
    scored = split_listing(args.data_root, split, args.acc)
    for path, (_, ckpt) in zip(paths, loaded):
        check_trained_on(path, ckpt, dataset, scored, acc=args.acc, split=split, data_root=args.data_root)
    return dataset, split, loaded


def time_networks(args: argparse.Namespace, nets: dict[str, torch.nn.Module], kinds: dict[str, tuple],
                  names: list[str]) -> dict:
    """The timing entries (:data:`TIMING_KEYS`): every network in every ``--modes`` entry, each cell measured, the
    ratio cell (the largest size, batch 1, all threads, CPU) and ``--profile``'s profile."""
    sizes = sorted(set(args.sizes))
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if args.device == "auto" and torch.cuda.is_available()
                                       else [])
    modes = {name if mode == "exact" else f"{name}+{mode}": (name, mode)
             for mode in dict.fromkeys(["exact", *args.modes]) for name in names}
    rows = measure(nets, kinds, settings(devices, sizes, sorted({1, args.throughput_batch})), args.repeats, modes)
    all_threads = max(row["threads"] or 0 for row in rows)
    return {"machine": machine(), "machine_line": describe_machine(machine()), "sizes": sizes,
            "repeats": args.repeats, "modes": {entry: mode for entry, (_, mode) in modes.items()}, "latency": rows,
            "ratio_cell": {"device": "cpu", "threads": all_threads, "size": sizes[-1], "batch": 1},
            "ratio_cell_text": f"{sizes[-1]} x {sizes[-1]}, batch 1, {all_threads} threads, CPU",
            "profile": profile(nets, kinds, modes, sizes[-1]) if args.profile else {}}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.repeats < 1 or args.throughput_batch < 1 or min(args.sizes) < 8 or (args.coils or 1) < 1:
        raise UserError("--repeats, --throughput-batch and --coils must be at least 1, --sizes at least 8")
    if args.data_root is None and (args.acc or args.split or args.mask):
        raise UserError("--acc, --split and --mask choose what --data-root scores; pass --data-root too")
    if args.data_root is not None:
        dataset, split, loaded = scored_data(args, args.checkpoints)
    else:
        loaded = [load_model(path, "--checkpoints") for path in args.checkpoints]
    names = network_names(args.checkpoints, [ckpt for _, ckpt in loaded], args.names)
    nets = {name: reconstructor(model).eval() for name, (model, _) in zip(names, loaded)}
    # A multi-coil network runs on as many coils as it was trained on, --coils N where given.
    kinds = {name: (image_channels_of(ckpt["arch"]), (args.coils or ckpt["config"]["coils"])
                    if ckpt.get("config", {}).get("coils") else None)
             for name, (_, ckpt) in zip(names, loaded)}
    scores = quality(args.eval_dir, args.checkpoints, names)
    timings = (earlier_timings(args.timings_from, names, {n: count_parameters(net) for n, net in nets.items()})
               if args.timings_from else None)
    by_mode = {}
    if args.data_root is not None:
        found = mode_quality(nets, list(INFERENCE_MODES), dataset, "cpu", args.batch_size)
        by_mode = {"data_root": str(args.data_root), "acc": args.acc, "split": split,
                   "test_set": f"{args.data_root.resolve().name}/{split}", "batch_size": args.batch_size,
                   "machine_line": describe_machine(machine()), "networks": found}
        # evaluate.py's figures, computed here: the table's PSNR / SSIM where no --eval-dir gives them.
        scores = scores or {name: {metric: found[name]["exact"][metric] for metric in ("PSNR", "SSIM")}
                            for name in names}
    if timings is None:
        timings = time_networks(args, nets, kinds, names)
    sizes = timings["sizes"]
    costs = static_costs(nets, kinds, sizes)
    report = {"machine": timings["machine"], "machine_line": timings["machine_line"], "networks": names,
              "checkpoints": {n: str(p) for n, p in zip(names, args.checkpoints)},
              "describe": {n: describe_arch(ckpt["arch"]).split(" (")[0] for n, (_, ckpt) in zip(names, loaded)},
              "sizes": sizes, "repeats": timings["repeats"], "modes": timings["modes"], "costs": costs,
              "quality": scores, "latency": timings["latency"], "ratio_cell": timings["ratio_cell"],
              "ratio_cell_text": timings["ratio_cell_text"],
              **({"timings_from": str(args.timings_from)} if args.timings_from else {})}
    report["ratios"] = ratios(costs, report["latency"], scores, names[0], report["ratio_cell"])
    report["profile"] = timings["profile"]
    if by_mode:
        report["mode_quality"] = by_mode
    with staged(args.out_dir, "--out-dir", STAGE_PREFIX, "compression_manifest.json", args.overwrite) as stage:
        write_json(stage / "compression.json", report)
        write_text(stage / "compression.md", table(report))
        plot(report, stage / "compression.png")
    print(table(report))
    print(f"wrote {args.out_dir / 'compression.md'}, compression.json and compression.png")


if __name__ == "__main__":
    run_cli(main)
