"""Time the event-driven convolution kernels against torch's dense convolution, by input density.

The first table covers the convolutions of the conv1d (SHD) and conv2d (DVS) benchmark networks, on all
frames of a batch of random binary spike maps. It reports the forward pass and the weight gradient in
milliseconds of CPU time (medians of seven calls), dense and by events. A second table times one step of the recurrent
convolutions of the conv1d network (a batch of 64, kernel 5) in microseconds. The density thresholds in
``lightning_snn.kernels.convolution`` and ``lightning_snn.kernels.recurrence`` come from this table.

Usage::

    python benchmarks/event_convolution.py [--threads 1]
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from lightning_snn.allocator import retain_freed_memory
from lightning_snn.kernels import cpu_extension

# (frames, in_channels, height, width, out_channels, kernel, stride, padding, density in the network)
CONVOLUTIONS = [
    (6400, 1, 1, 700, 16, (1, 21), (1, 10), (0, 0), 0.03),
    (6400, 16, 1, 68, 32, (1, 7), (1, 3), (0, 0), 0.044),
    (6400, 32, 1, 21, 64, (1, 7), (1, 3), (0, 0), 0.06),
    (6400, 16, 1, 68, 16, (1, 5), (1, 1), (0, 2), 0.044),
    (6400, 32, 1, 21, 32, (1, 5), (1, 1), (0, 2), 0.06),
    (6400, 64, 1, 5, 64, (1, 5), (1, 1), (0, 2), 0.094),
    (800, 2, 32, 32, 16, (3, 3), (1, 1), (2, 2), 0.03),
    (800, 16, 17, 17, 16, (3, 3), (1, 1), (2, 2), 0.05),
    (800, 16, 9, 9, 32, (3, 3), (1, 1), (2, 2), 0.05),
    (800, 32, 11, 11, 32, (3, 3), (1, 1), (2, 2), 0.05),
]


def median_ms(function, repeats: int = 7) -> float:
    """Return the median CPU time of ``function()`` in milliseconds, after one warm-up call."""
    function()
    times = []
    for _ in range(repeats):
        begin = time.process_time()
        function()
        times.append(time.process_time() - begin)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    retain_freed_memory()
    kernels = cpu_extension.load()
    if kernels is None:
        raise SystemExit(
            "The C++ kernels are not available on this machine. Install a C++ compiler (g++ or clang++) and "
            "unset LIGHTNING_SNN_NO_CPP."
        )

    print("convolution                        density  forward dense / events   weight gradient dense / events (ms)")
    for frames, in_channels, height, width, out_channels, kernel, stride, padding, density in CONVOLUTIONS:
        for level in (density, 0.1, 0.2):
            x = (torch.rand(frames, in_channels, height, width) < level).float()
            weight = torch.randn(out_channels, in_channels, *kernel)
            output = F.conv2d(x, weight, None, stride, padding)
            grad_output = torch.randn_like(output)
            samples = x[None]
            forward_dense = median_ms(lambda: F.conv2d(x, weight, None, stride, padding))
            forward_events = median_ms(
                lambda: kernels.conv_forward_events(samples, weight, None, *output.shape[2:], *stride, *padding)
            )
            gradient_dense = median_ms(lambda: torch.nn.grad.conv2d_weight(x, weight.shape, grad_output, stride, padding))
            gradient_events = median_ms(
                lambda: kernels.conv_weight_gradient_events(samples, grad_output[None], *kernel, *stride, *padding)
            )
            name = f"{in_channels}x{height}x{width} -> {out_channels}x{output.shape[2]}x{output.shape[3]}"
            print(f"{name:34s} {level:7.3f}  {forward_dense:8.1f} / {forward_events:6.1f}"
                  f"          {gradient_dense:8.1f} / {gradient_events:6.1f}")


    print("\nrecurrent step (batch 64, kernel 5)  density  dense / events (us)")
    for channels, length in ((16, 68), (32, 21), (64, 5)):
        weight = torch.randn(channels, channels, 1, 5)
        for level in (0.05, 0.1, 0.2, 0.3):
            x = (torch.rand(64, channels, 1, length) < level).float()
            # Each call builds the kernel's tables, which the recurrent loop builds once per sequence.
            dense = median_ms(lambda: [F.conv2d(x, weight, None, 1, (0, 2)) for _ in range(100)]) * 10
            events = median_ms(
                lambda: [kernels.conv_forward_events(x[None], weight, None, 1, length, 1, 1, 0, 2) for _ in range(100)]
            ) * 10
            print(f"{channels} channels x {length:3d} positions       {level:5.2f}  {dense:6.0f} / {events:6.0f}")


if __name__ == "__main__":
    main()
