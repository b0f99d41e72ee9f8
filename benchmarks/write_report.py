"""Write docs/benchmarks.md from the JSON that training_step.py saved.

Usage::

    python benchmarks/write_report.py benchmarks/results.json [--output docs/benchmarks.md]

Every number on the page comes from the JSON file; rerun the benchmark and this script to update it.
"""

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

LIBRARY_NOTES = {
    "lightning_snn": "this library, default backend (`auto`): fused LIF and readout kernels with compiled C++ steps, event-driven projections and convolutions of sparse spikes (input and recurrent)",
    "lightning_snn_plain": "this library, `set_backend(\"plain\")`: the step-by-step autograd loop",
    "lightning_snn_compile": "this library, plain backend, network forward wrapped in `torch.compile`",
    "snntorch": "snnTorch `Synaptic` / `RSynaptic` stepped in a Python loop (its tutorial idiom)",
    "spikingjelly": "SpikingJelly multi-step `CUBALIFNode`, torch backend; `LinearRecurrentContainer` for dense recurrence",
    "norse": "Norse `LIF` / `LIFRecurrent` / `LI` in `SequentialState`, eager",
    "norse_compile": "the Norse model with its forward wrapped in `torch.compile`",
}
PEERS = ("snntorch", "spikingjelly", "norse", "norse_compile")
PEER_GAPS = (
    "Features a peer lacks are written in plain PyTorch around the peer's own neuron: recurrent 1-D "
    "convolutions (snnTorch, SpikingJelly, Norse), a leaky readout (SpikingJelly), and folding time into "
    "the batch for convolutions (Norse)."
)


BACKENDS = """## Backends

`lightning_snn.kernels.set_backend(name)` (or the `use_backend(name)` context manager) selects how
populations run:

- `"auto"` (default): `LIF`, `AdaptiveLIF`, `LearnableAdaptiveLIF` and `LeakyReadout` populations run
  through fused sequence kernels with a hand-written backward pass through time. They do so when the
  kernels support every feature in use: the Heaviside surrogates (all but `MultiSpike` and
  `EscapeNoiseSpike`), detached or differentiable reset, `clamp_mem`, dropout, stateful carry,
  heterogeneous and learnable time constants, and a bias-free dense or stride-1 convolutional
  recurrence. Everything else (E/I neurons, Dale's layers, recorded state variables, other
  recurrences, a connection under an initializer's probe) runs in the plain loop. On the CPU the
  elementwise work of each LIF step runs in C++ (`lightning_snn/kernels/csrc/`, compiled on first use;
  `LIGHTNING_SNN_NO_CPP=1` keeps torch ops). On a CUDA device with Triton installed, a LIF population
  without recurrence runs its whole sequence in one Triton launch. Dense connections project inputs
  that need no gradient event by event when their sampled density is at most
  `lightning_snn.kernels.events.EVENT_DENSITY_THRESHOLD`, and dense recurrences do so for every step
  whose spikes are sparse. Convolutions of sparse spike maps (`lightning_snn.kernels.convolution`)
  compute their output and weight gradient event by event in C++, and so do convolutional recurrences
  for their sparse steps. `MaxPool` runs a C++ pooling kernel.
- `"plain"`: the step-by-step autograd loop and dense projections everywhere.
- `"fused"`: like `"auto"`, but raises `NotImplementedError` where a population cannot use a fused
  kernel.

Code traced by `torch.compile` always takes the plain path, which compiles with `fullgraph=True`.

## Memory allocator

With glibc's default settings every buffer above 32 MiB is mapped afresh and returned on release, so
each training step pays page faults for its sequence buffers. The `lightning-snn` command calls
`lightning_snn.allocator.retain_freed_memory()`, which makes glibc reuse freed memory. The benchmark
applies the same setting to every library's process (`--allocator retain`, the default), so the
comparison measures the libraries, not the allocator.
"""


def fmt(value, digits=1):
    return "–" if value is None else f"{value:.{digits}f}"


def network_table(name: str, results: dict, gemm: float) -> list[str]:
    lines = [
        "| library | step time (ms) | × fastest peer | peak RSS added (MB) | dense-equivalent GFLOP/s | % of GEMM rate | build + 2 warm-up steps (s) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for library, entry in results.items():
        if "median_ms" not in entry:
            lines.append(f"| {library} | {entry['status']} | | | | | |")
            continue
        throughput = entry["dense_gflop"] / (entry["median_ms"] / 1e3)
        share = 100 * throughput / gemm if gemm else None
        lines.append(
            f"| {library} | {fmt(entry['median_ms'])} | {fmt(entry.get('ratio_to_fastest_peer'), 2)} | "
            f"{fmt(entry['peak_mb_median'], 0)} | {fmt(throughput)} | {fmt(share, 0)} | {fmt(entry.get('warmup_s'))} |"
        )
    return lines


def verdicts(report: dict) -> list[str]:
    lines = []
    for name, results in report["networks"].items():
        ours = results.get("lightning_snn", {})
        if "ratio_to_fastest_peer" not in ours:
            continue
        ratio = ours["ratio_to_fastest_peer"]
        speedup = 1 / ratio
        target = "meets" if speedup >= 2 else "misses"
        lines.append(f"- `{name}`: {speedup:.2f}× the speed of the fastest peer, which {target} the 2× target.")
    memory = report["networks"].get("ff3_T350", {})
    peers = [entry["peak_mb_median"] for library, entry in memory.items()
             if library in PEERS and "peak_mb_median" in entry]
    if "peak_mb_median" in memory.get("lightning_snn", {}) and peers:
        ours, lowest = memory["lightning_snn"]["peak_mb_median"], min(peers)
        target = "meets" if ours <= lowest / 2 else "misses"
        lines.append(
            f"- Peak memory at T = 350: {ours:.0f} MB against {lowest:.0f} MB for the lowest peer "
            f"({ours / lowest:.2f} of it), which {target} the target of at most half."
        )
    return lines


def compile_lines(report: dict) -> list[str]:
    lines = []
    for name, results in report["networks"].items():
        compiled = results.get("lightning_snn_compile", {})
        plain = results.get("lightning_snn_plain", {})
        fused = results.get("lightning_snn", {})
        if "median_ms" in compiled and "median_ms" in plain:
            lines.append(
                f"- `{name}`: compiled plain loop {compiled['median_ms']:.1f} ms per step, after "
                f"{compiled['warmup_s']:.0f} s to build, compile and run two warm-up steps; eager plain loop "
                f"{plain['median_ms']:.1f} ms; "
                f"fused kernels {fused.get('median_ms', float('nan')):.1f} ms."
            )
        elif compiled:
            lines.append(f"- `{name}`: compiled plain loop {compiled.get('status', 'not run')}.")
    return lines


def render(report: dict, source: str) -> str:
    machine = report["machine"]
    versions = ", ".join(f"{name} {version}" for name, version in machine["versions"].items())
    gemm = report.get("gemm_gflops")
    lines = [
        "# Training speed on CPU",
        "",
        "One training step (forward, cross-entropy on the readout maximum over time, backward, Adam step) of "
        "the same networks in lightning_snn and in its peers, float32, same weights and same input "
        "(Bernoulli spikes of 3 % density). Each library and network runs in its own process; rounds "
        "interleave the libraries of a network, and the tables give the median over all timed steps. "
        "\"× fastest peer\" divides by the fastest of snnTorch, SpikingJelly, Norse and compiled Norse "
        "(below 1 is faster). Peak RSS added is the resident-memory high-water mark during the steps of "
        "a round minus the resident memory before them, after freed memory was handed back to the system. "
        "Dense-equivalent GFLOP/s divides the FLOPs that "
        "dense matmuls and convolutions of the step would need (forward, input gradient except for the "
        "network input, weight gradient) by the step time. It can exceed the GEMM rate where the "
        "event-driven paths skip the zeros.",
        "",
        "## Setup",
        "",
        f"- Machine: {machine['cpu']}, {machine['cores']} cores, AVX-512: {machine['avx512']}; "
        f"{machine['threads']} torch thread(s) per process.",
        f"- Software: {versions}.",
        f"- Float32 GEMM rate at this thread count (1024 × 1024 matmul): {fmt(gemm)} GFLOP/s.",
        f"- Load average (1, 5, 15 min) before: {report['load_before']}, after: {report['load_after']}. "
        "Other processes shared the machine when the load exceeds the number of threads used.",
        f"- Allocator: `{report.get('allocator', 'default')}` in every process (see Memory allocator below).",
        f"- Rounds: {report['rounds']} of {report['steps']} timed steps per library, each after one untimed step "
        "(the peak memory reset before it hands memory back to the system, so it pays page faults)"
        + (" (quick mode: 20 time steps)." if report.get("quick") else "."),
        f"- Command: `{report['command']}`, then `python benchmarks/write_report.py {source}`.",
        "",
        "Networks (batch 64 unless noted):",
        "",
        "- `ff3`: 700 → 3 × 128 LIF → 20 readout, T = 100 (`ff3_T350`: T = 350).",
        "- `rec1`: 700 → 256 recurrent LIF → 20, T = 100.",
        "- `conv1d`: Stork's recurrent convolutional SHD network. Three recurrent Conv1d layers with 16/32/64 "
        "filters, kernels 21/7/7, strides 10/3/3 and recurrent kernel 5, read out from 320 units; T = 100.",
        "- `conv2d`: Stork's DVS network on 2 × 32 × 32 frames. Two blocks of two Conv2d k3 p2 and a 2 × 2 "
        "max-pool, 16 and 32 filters; T = 100, batch 8.",
        "",
        "Libraries:",
        "",
    ]
    for library, note in LIBRARY_NOTES.items():
        lines.append(f"- `{library}`: {note}.")
    lines += ["", PEER_GAPS, ""]

    for name, results in report["networks"].items():
        lines += [f"## {name}", ""]
        ours = results.get("lightning_snn", {})
        if "firing_probability" in ours:
            rates = ", ".join(f"{100 * rate:.1f} %" for rate in ours["firing_probability"])
            lines += [f"Spikes per neuron and step in the hidden layers: {rates}.", ""]
        lines += network_table(name, results, gemm) + [""]

    lines += ["## Against the 2× target", ""] + (verdicts(report) or ["- No lightning_snn results."]) + [""]

    compiled = compile_lines(report)
    if compiled:
        lines += [
            "## Does compiling the step loop pay off on CPU?",
            "",
            "`torch.compile(network, fullgraph=True)` traces the plain backend's loop (the fused kernels "
            "step aside while compiling). The compilation time counts from a cold start only when "
            "TorchInductor's on-disk cache holds nothing from earlier runs. Measured here:",
            "",
            *compiled,
            "",
        ]

    sweep = report.get("density_sweep")
    if sweep:
        lines += [
            "## Event-driven input projection",
            "",
            "Forward and weight gradient of a 700 → 128 projection of 6,400 rows (batch 64 × 100 steps), "
            "dense matmul against the event-driven path, by input density:",
            "",
            "| density | dense (ms) | event-driven (ms) |",
            "|---:|---:|---:|",
        ]
        lines += [f"| {100 * e['density']:.0f} % | {e['dense_ms']:.1f} | {e['event_ms']:.1f} |" for e in sweep]
        lines += [""]

    data = report.get("data_path")
    if data:
        lines += [
            "## Data path",
            "",
            "Samples per second read by one process (one DataLoader worker) from generated files. The SHD "
            "reader reads an SHD-layout HDF5 file (2,000–4,000 spikes per sample, binned to 1,000 steps × 700 "
            "units). The DVS reader reads a DVS Gesture frame cache (300,000 events per recording, 32 × 32 "
            "frames, 100-frame random crops).",
            "",
            "| reader | samples/s | item shape |",
            "|---|---:|---|",
        ]
        for key, entry in data.items():
            lines.append(f"| {key} | {entry['samples_per_s']:.0f} | {tuple(entry['shape'])} |")
        dvs = data.get("dvs_frames", {})
        if "cache_build_s_per_recording" in dvs:
            lines += ["", f"Building the DVS frame cache took {dvs['cache_build_s_per_recording']:.2f} s per recording."]
        lines += [""]
    lines += [BACKENDS]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", help="JSON file written by training_step.py --output.")
    parser.add_argument("--output", default=str(ROOT / "docs" / "benchmarks.md"), help="Markdown file to write.")
    args = parser.parse_args(argv)
    report = json.loads(Path(args.results).read_text())
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(render(report, args.results))


if __name__ == "__main__":
    main()
