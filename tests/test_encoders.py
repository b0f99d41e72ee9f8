import math

import pytest
import torch

from lightning_snn.data.encoders import LatencyEncoder, PoissonEncoder

# LatencyEncoder with tau 50 ms and dt 1 ms: T = 50 ln(x / (x - 0.1)) steps.


def test_latency_full_input_bin():
    # T = 50 ln(1 / 0.9) = 5.27 -> bin 5.
    raster = LatencyEncoder(num_steps=100, normalize=False)(torch.tensor([1.0]))
    assert raster.shape == (100, 1)
    assert raster[5, 0] == 1
    assert raster.sum() == 1


def test_latency_spike_times_closed_form():
    encoder = LatencyEncoder(num_steps=100, normalize=False)
    x = torch.tensor([1.0, 0.5, 0.2])
    expected = torch.tensor([50 * math.log(1 / 0.9), 50 * math.log(0.5 / 0.4), 50 * math.log(2.0)])
    torch.testing.assert_close(encoder.first_spike_times(x), expected)


def test_latency_bins_follow_floor():
    # 0.5 -> 50 ln(1.25) = 11.16 -> bin 11; 0.2 -> 50 ln 2 = 34.66 -> bin 34.
    raster = LatencyEncoder(num_steps=100, normalize=False)(torch.tensor([0.5, 0.2]))
    assert raster[11, 0] == 1
    assert raster[34, 1] == 1
    assert raster.sum() == 2


def test_latency_silent_at_threshold():
    raster = LatencyEncoder(num_steps=100, normalize=False)(torch.tensor([0.1, 0.05, 0.0]))
    assert raster.sum() == 0


def test_latency_drops_late_spikes():
    # 0.11 -> 50 ln(11) = 119.9 steps, past the 100-step window.
    raster = LatencyEncoder(num_steps=100, normalize=False)(torch.tensor([0.11]))
    assert raster.sum() == 0


def test_latency_time_constant_scales():
    # tau 20 ms with dt 2 ms gives tau_eff = 10 steps: x = 1 -> 10 ln(1 / 0.9) = 1.05 -> bin 1.
    raster = LatencyEncoder(num_steps=10, dt=2e-3, tau=20e-3, normalize=False)(torch.tensor([1.0]))
    assert raster[1, 0] == 1


def test_latency_normalize_scales_sample():
    # [2, 4, 6] scales to [0, 0.5, 1]: silent, bin 11, bin 5.
    raster = LatencyEncoder(num_steps=100, normalize=True)(torch.tensor([2.0, 4.0, 6.0]))
    assert raster[:, 0].sum() == 0
    assert raster[11, 1] == 1
    assert raster[5, 2] == 1


def test_latency_normalize_constant_sample():
    raster = LatencyEncoder(num_steps=100, normalize=True)(torch.full((4,), 3.0))
    assert raster.sum() == 0


def test_latency_batch_layout():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    raster = LatencyEncoder(num_steps=20, normalize=False)(x)
    assert raster.shape == (3, 20, 2)
    assert raster.dtype == torch.float32
    assert raster[0, 5, 0] == 1
    assert raster[1, 5, 1] == 1
    assert raster[2, 11].tolist() == [1.0, 1.0]


def test_latency_rejects_images():
    with pytest.raises(ValueError, match="flatten"):
        LatencyEncoder(num_steps=10)(torch.rand(2, 8, 8))


def test_latency_rejects_zero_threshold():
    with pytest.raises(ValueError, match="threshold"):
        LatencyEncoder(num_steps=10, threshold=0.0)


# PoissonEncoder


def test_poisson_empirical_rate():
    # x = 0.5 at 100 Hz and 1 ms: p = 0.05 per bin. Over 400k bins the standard error is 3.4e-4.
    encoder = PoissonEncoder(num_steps=2000)
    generator = torch.Generator().manual_seed(0)
    raster = encoder(torch.full((200,), 0.5), generator=generator)
    assert abs(raster.mean().item() - 0.05) < 0.002


def test_poisson_rate_follows_input():
    encoder = PoissonEncoder(num_steps=2000, max_rate=200.0)
    generator = torch.Generator().manual_seed(1)
    raster = encoder(torch.tensor([0.0, 0.25, 1.0]).repeat(50), generator=generator)
    per_unit = raster.mean(dim=0).view(50, 3).mean(dim=0)
    assert per_unit[0] == 0
    assert abs(per_unit[1].item() - 0.05) < 0.003
    assert abs(per_unit[2].item() - 0.2) < 0.005


def test_poisson_window_and_background():
    # Window [25, 75) of 100 steps; 50 Hz background outside gives p = 0.05.
    encoder = PoissonEncoder(
        num_steps=100, max_rate=0.0, start_frac=0.25, stop_frac=0.75, background_rate=50.0
    )
    generator = torch.Generator().manual_seed(2)
    raster = encoder(torch.ones(4000), generator=generator)
    assert raster[25:75].sum() == 0
    outside = torch.cat([raster[:25], raster[75:]])
    assert abs(outside.mean().item() - 0.05) < 0.003


def test_poisson_same_generator_seed_same_raster():
    encoder = PoissonEncoder(num_steps=50)
    x = torch.rand(3, 10, generator=torch.Generator().manual_seed(0))
    first = encoder(x, generator=torch.Generator().manual_seed(4))
    second = encoder(x, generator=torch.Generator().manual_seed(4))
    assert torch.equal(first, second)


def test_poisson_batch_layout():
    raster = PoissonEncoder(num_steps=30)(torch.rand(4, 7))
    assert raster.shape == (4, 30, 7)
    assert raster.dtype == torch.float32
    assert torch.all((raster == 0) | (raster == 1))


def test_poisson_rejects_rate_above_bin():
    with pytest.raises(ValueError, match="exceeds 1"):
        PoissonEncoder(num_steps=10, dt=1e-3, max_rate=2000.0)


def test_poisson_rejects_large_input():
    # 20 * 100 Hz * 1 ms = 2 spikes per bin.
    with pytest.raises(ValueError, match="above 1"):
        PoissonEncoder(num_steps=10)(torch.tensor([20.0]))


def test_poisson_rejects_negative_input():
    with pytest.raises(ValueError, match="0 or more"):
        PoissonEncoder(num_steps=10)(torch.tensor([-0.1]))


def test_poisson_rejects_reversed_window():
    with pytest.raises(ValueError, match="start_frac"):
        PoissonEncoder(num_steps=10, start_frac=0.8, stop_frac=0.2)
