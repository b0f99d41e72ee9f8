"""Time one training step of the same spiking networks in lightning_snn and in peer libraries.

A training step is forward, cross-entropy on the readout maximum over time, backward and one Adam
step, in float32. Every (network, library) pair runs in its own worker process, which builds the model
once and then waits for commands, so the rounds can interleave all libraries of a network without
paying start-up or compilation again. Each round runs one untimed and ``--steps`` timed steps in every
worker, in a rotating order. The tables report medians over all timed steps and the peak resident memory that the
steps added: ``VmHWM`` minus ``VmRSS`` before the steps, after resetting the high-water mark.

Usage::

    python benchmarks/training_step.py --output benchmarks/results.json      # full run
    python benchmarks/training_step.py --quick                               # smoke test
    python benchmarks/write_report.py benchmarks/results.json                # docs/benchmarks.md

The peers must be installed (``pip install lightning-snn[bench]``); a missing peer is reported as
unavailable instead of failing the run.
"""

import argparse
import ctypes
import gc
import json
import os
import platform
import queue
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

#: Library configurations: (builder, lightning_snn backend, compile the model).
LIBRARIES = {
    "lightning_snn": ("lightning_snn", "auto", False),
    "lightning_snn_plain": ("lightning_snn", "plain", False),
    "lightning_snn_compile": ("lightning_snn", "plain", True),
    "snntorch": ("snntorch", None, False),
    "spikingjelly": ("spikingjelly", None, False),
    "norse": ("norse", None, False),
    "norse_compile": ("norse", None, True),
}
PEERS = ("snntorch", "spikingjelly", "norse", "norse_compile")
DEFAULT_LIBRARIES = ("lightning_snn", "lightning_snn_plain", "lightning_snn_compile", "snntorch", "spikingjelly",
                     "norse", "norse_compile")
#: Compiled configurations run only on these networks by default, because compiling the unrolled time
#: loop of the longer or convolutional networks takes minutes on a CPU.
COMPILE_NETWORKS = {"lightning_snn_compile": ("ff3",), "norse_compile": ("ff3", "rec1")}


# ------------------------------------------------------------------------------------------------
# Worker side
# ------------------------------------------------------------------------------------------------


def _read_status() -> dict[str, int]:
    """Return VmRSS and VmHWM of this process in kB."""
    values = {}
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(("VmRSS:", "VmHWM:")):
                name, amount = line.split()[:2]
                values[name.rstrip(":")] = int(amount)
    return values


def _reset_peak_memory() -> int:
    """Release freed heap memory, reset the RSS high-water mark and return the current RSS in kB."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    return _read_status()["VmRSS"]


def _make_step(library: str, network: str, quick: bool):
    import torch
    import torch.nn.functional as F

    import networks

    builder_name, backend, compile_model = LIBRARIES[library]
    spec = networks.NETWORKS[network]
    if quick:
        spec = networks.quick_spec(spec)
    weights = networks.make_weights(spec)
    x, labels = networks.make_data(spec)

    if builder_name == "lightning_snn":
        from lightning_snn.kernels import set_backend

        set_backend(backend)
    model, forward, layout = networks.BUILDERS[builder_name](spec, weights)
    if layout == "time_first":
        x = x.transpose(0, 1).contiguous()
    time_dim = 1 if layout == "batch_first" else 0
    if compile_model:
        forward = torch.compile(forward)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step():
        optimizer.zero_grad(set_to_none=True)
        output = forward(x)
        loss = F.cross_entropy(output.max(dim=time_dim).values, labels)
        loss.backward()
        optimizer.step()
        return loss

    info = {"dense_gflop": networks.dense_flops(spec) / 1e9, "num_steps": spec.num_steps,
            "batch_size": spec.batch_size}
    if builder_name == "lightning_snn":
        with torch.no_grad():
            rates = [float(s.mean()) for s in model(x).spikes.values()]
        info["firing_probability"] = [round(rate, 4) for rate in rates]
    return step, info


def run_worker(library: str, network: str, threads: int, quick: bool, allocator: str = "retain") -> None:
    """Serve ``run K`` commands on stdin with one JSON line each on stdout until ``quit``."""
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # library output goes to stderr and cannot garble the protocol

    if allocator == "retain":
        # Every library gets the allocator setting that the lightning-snn command applies, so that
        # the comparison measures the libraries and not glibc's page faults.
        from lightning_snn.allocator import retain_freed_memory

        retain_freed_memory()

    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    started = time.perf_counter()
    step, info = _make_step(library, network, quick)
    for _ in range(2):
        step()
    info["warmup_s"] = round(time.perf_counter() - started, 2)
    protocol.write(json.dumps({"ready": True, **info}) + "\n")

    for line in sys.stdin:
        command = line.split()
        if not command or command[0] == "quit":
            break
        count = int(command[1])
        baseline = _reset_peak_memory()
        # The reset hands freed memory back to the system, so the next step pays page faults to map it
        # again, which the allocator setting otherwise avoids. That step runs untimed, and the peak
        # memory still covers it.
        step()
        times = []
        for _ in range(count):
            begin = time.perf_counter()
            step()
            times.append(time.perf_counter() - begin)
        peak = _read_status()["VmHWM"]
        protocol.write(json.dumps({"times": times, "peak_mb": (peak - baseline) / 1024}) + "\n")


def run_gemm(threads: int, size: int = 1024, repeats: int = 20) -> float:
    """Return the float32 matmul rate in GFLOP/s of ``size``-square matrices on ``threads`` threads."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        begin = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - begin)
    return 2 * size**3 / statistics.median(times) / 1e9


def run_density_sweep(threads: int, densities=(0.01, 0.03, 0.1, 0.2, 0.3, 0.5)) -> list[dict]:
    """Time a 700 -> 128 projection of 6400 rows (forward and weight gradient), dense and event-driven."""
    import torch
    import torch.nn.functional as F

    from lightning_snn.kernels import event_linear

    torch.set_num_threads(threads)
    rows, inputs, outputs = 6400, 700, 128
    weight = torch.randn(outputs, inputs, requires_grad=True)
    grad = torch.randn(rows, outputs)
    results = []
    for density in densities:
        x = (torch.rand(rows, inputs) < density).float()
        entry = {"density": density}
        for name, project in (("dense_ms", F.linear), ("event_ms", event_linear)):
            times = []
            for _ in range(7):
                begin = time.perf_counter()
                project(x, weight).backward(grad)
                times.append(time.perf_counter() - begin)
                weight.grad = None
            entry[name] = 1e3 * statistics.median(times[2:])
        results.append(entry)
    return results


# ------------------------------------------------------------------------------------------------
# Orchestrator side
# ------------------------------------------------------------------------------------------------


class Worker:
    """A worker process and a reader thread that forwards its protocol lines."""

    def __init__(self, library: str, network: str, threads: int, quick: bool, allocator: str) -> None:
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", library, network,
                   "--threads", str(threads), "--allocator", allocator] + (["--quick"] if quick else [])
        environment = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        self.library = library
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, env=environment)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self.stderr_tail: list[str] = []
        threading.Thread(target=self._drain_stderr, daemon=True).start()

    def _pump(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def _drain_stderr(self) -> None:
        for line in self.process.stderr:
            self.stderr_tail = (self.stderr_tail + [line.rstrip()])[-20:]

    def receive(self, timeout: float) -> dict:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"{self.library} did not respond within {timeout:.0f} s") from None
        if line is None:
            raise RuntimeError(f"{self.library} exited: " + " | ".join(self.stderr_tail[-5:]))
        return json.loads(line)

    def send(self, command: str) -> None:
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.send("quit")
                self.process.wait(timeout=30)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.process.kill()


def benchmark_network(network: str, libraries, args) -> dict:
    results: dict[str, dict] = {}
    workers = []
    for library in libraries:
        worker = Worker(library, network, args.threads, args.quick, args.allocator)
        try:
            ready = worker.receive(timeout=args.warmup_timeout)
            workers.append(worker)
            results[library] = {"status": "ok", **{k: v for k, v in ready.items() if k != "ready"},
                                "times": [], "peak_mb": []}
            print(f"  {library}: ready after {ready['warmup_s']} s", file=sys.stderr)
        except (TimeoutError, RuntimeError) as error:
            worker.process.kill()
            results[library] = {"status": f"n/a: {error}"}
            print(f"  {library}: {error}", file=sys.stderr)

    for round_index in range(args.rounds):
        shift = round_index % max(len(workers), 1)
        for worker in workers[shift:] + workers[:shift]:
            entry = results[worker.library]
            if entry["status"] != "ok":
                continue
            try:
                worker.send(f"run {args.steps}")
                answer = worker.receive(timeout=args.step_timeout)
            except (TimeoutError, RuntimeError, BrokenPipeError) as error:
                entry["status"] = f"n/a: {error}"
                continue
            entry["times"].extend(answer["times"])
            entry["peak_mb"].append(answer["peak_mb"])
        print(f"  round {round_index + 1}/{args.rounds} done", file=sys.stderr)
    for worker in workers:
        worker.close()

    for entry in results.values():
        if entry["status"] == "ok" and entry["times"]:
            entry["median_ms"] = 1e3 * statistics.median(entry["times"])
            entry["peak_mb_median"] = statistics.median(entry["peak_mb"])
    peer_medians = [results[p]["median_ms"] for p in PEERS if "median_ms" in results.get(p, {})]
    if peer_medians:
        fastest = min(peer_medians)
        for entry in results.values():
            if "median_ms" in entry:
                entry["ratio_to_fastest_peer"] = entry["median_ms"] / fastest
    return results


def machine_info(threads: int) -> dict:
    import torch

    model = "unknown"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    flags = ""
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("flags"):
                flags = line
                break
    versions = {"torch": torch.__version__, "python": platform.python_version()}
    for name in ("snntorch", "spikingjelly", "norse"):
        try:
            from importlib.metadata import version

            versions[name] = version(name)
        except Exception:  # noqa: BLE001 - a missing peer is reported, not fatal
            versions[name] = "not installed"
    # Allocator settings change the step times of large-tensor code severalfold, so they are recorded.
    allocator = {name: value for name, value in os.environ.items()
                 if name == "THP_MEM_ALLOC_ENABLE" or name.startswith("MALLOC_")}
    return {"cpu": model, "cores": os.cpu_count(), "avx512": "avx512f" in flags, "threads": threads,
            "versions": versions, "allocator_environment": allocator}


def load_average() -> str:
    with open("/proc/loadavg") as loadavg:
        return " ".join(loadavg.read().split()[:3])


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--networks", default=None, help="Comma-separated networks (default: all).")
    parser.add_argument("--libraries", default=None, help="Comma-separated library configurations.")
    parser.add_argument("--rounds", type=int, default=7, help="Interleaved rounds per network.")
    parser.add_argument("--steps", type=int, default=3, help="Timed training steps per worker and round.")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in every process.")
    parser.add_argument("--quick", action="store_true", help="20 time steps, 2 rounds of 2 steps, no compile.")
    parser.add_argument("--warmup-timeout", type=float, default=300.0, help="Seconds allowed to build and warm up.")
    parser.add_argument("--step-timeout", type=float, default=600.0, help="Seconds allowed per round of steps.")
    parser.add_argument("--allocator", choices=("retain", "default"), default="retain",
                        help="'retain': every worker keeps freed memory for reuse, as the lightning-snn "
                             "command does (lightning_snn.allocator); 'default': glibc's own settings.")
    parser.add_argument("--no-extras", action="store_true", help="Skip the GEMM rate, density sweep and data path.")
    parser.add_argument("--output", default=None, help="JSON file for the results.")
    parser.add_argument("--worker", nargs=2, metavar=("LIBRARY", "NETWORK"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _runs_on(library: str, network: str, quick: bool) -> bool:
    """Return True when ``library`` belongs in the default run on ``network``."""
    if not LIBRARIES[library][2]:
        return True
    return not quick and network in COMPILE_NETWORKS.get(library, ())


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        run_worker(*args.worker, threads=args.threads, quick=args.quick, allocator=args.allocator)
        return

    import networks

    if args.quick:
        args.rounds, args.steps = min(args.rounds, 2), min(args.steps, 2)
    names = args.networks.split(",") if args.networks else list(networks.NETWORKS)
    libraries = args.libraries.split(",") if args.libraries else list(DEFAULT_LIBRARIES)
    for name in names:
        if name not in networks.NETWORKS:
            raise SystemExit(f"Unknown network {name!r}; choose from {list(networks.NETWORKS)}.")
    for library in libraries:
        if library not in LIBRARIES:
            raise SystemExit(f"Unknown library {library!r}; choose from {list(LIBRARIES)}.")

    report = {"command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
              "machine": machine_info(args.threads), "rounds": args.rounds, "steps": args.steps,
              "quick": args.quick, "allocator": args.allocator, "load_before": load_average(), "networks": {}}
    if not args.no_extras:
        report["gemm_gflops"] = run_gemm(args.threads)
        print(f"GEMM: {report['gemm_gflops']:.1f} GFLOP/s", file=sys.stderr)
    for name in names:
        print(f"{name}:", file=sys.stderr)
        chosen = [lib for lib in libraries if args.libraries or _runs_on(lib, name, args.quick)]
        report["networks"][name] = benchmark_network(name, chosen, args)
    if not args.no_extras:
        report["density_sweep"] = run_density_sweep(args.threads)
        import data_path

        report["data_path"] = data_path.measure(quick=args.quick)
    report["load_after"] = load_average()

    text = json.dumps(report, indent=1)
    if args.output:
        Path(args.output).write_text(text)
    summarize(report)


def summarize(report: dict) -> None:
    for name, results in report["networks"].items():
        print(f"\n{name}")
        for library, entry in results.items():
            if "median_ms" in entry:
                ratio = entry.get("ratio_to_fastest_peer")
                ratio_text = f"{ratio:.2f}x fastest peer" if ratio else ""
                print(f"  {library:24s} {entry['median_ms']:9.1f} ms  {entry['peak_mb_median']:7.0f} MB  {ratio_text}")
            else:
                print(f"  {library:24s} {entry['status']}")


if __name__ == "__main__":
    main()
