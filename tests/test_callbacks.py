"""TensorBoard callbacks: raster figures, readout traces and histograms, schedule and fallbacks."""

import lightning.pytorch as pl
import matplotlib.pyplot as plt
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from task_helpers import DT, NUM_INPUTS, NUM_STEPS, PatternDataModule, dense_network
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_snn.callbacks import ActivityHistogramLogger, SpikeRasterLogger
from lightning_snn.callbacks.histograms import connection_weights
from lightning_snn.callbacks.raster import readout_figure
from lightning_snn.losses import MaxOverTimeCrossEntropy
from lightning_snn.tasks import SNNClassifier

# PatternDataModule with batch size 16 and 64 training samples gives 4 batches per epoch.
BATCHES_PER_EPOCH = 4


def make_model() -> SNNClassifier:
    network = dense_network()
    return SNNClassifier(network, input_shape=(NUM_INPUTS,), num_classes=2, dt=DT, num_steps=NUM_STEPS)


def fit(tmp_path, callbacks, logger="tensorboard", **kwargs) -> pl.Trainer:
    if logger == "tensorboard":
        logger = TensorBoardLogger(tmp_path, default_hp_metric=False)
    options = dict(
        accelerator="cpu",
        max_epochs=1,
        default_root_dir=tmp_path,
        logger=logger,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    options.update(kwargs)
    trainer = pl.Trainer(**options)
    trainer.fit(make_model(), datamodule=PatternDataModule())
    return trainer


def read_events(trainer: pl.Trainer) -> EventAccumulator:
    events = EventAccumulator(trainer.logger.log_dir, size_guidance={"images": 0, "histograms": 0})
    events.Reload()
    return events


def test_raster_logger_writes_figures(tmp_path):
    trainer = fit(tmp_path, [SpikeRasterLogger(every_n_epochs=1, num_samples=2)])
    images = read_events(trainer).Tags()["images"]
    for tag in ("raster/input", "raster/layer1", "readout"):
        assert tag in images


def test_histogram_logger_writes_rates_and_weights(tmp_path):
    trainer = fit(tmp_path, [ActivityHistogramLogger(every_n_epochs=1)])
    histograms = read_events(trainer).Tags()["histograms"]
    for tag in ("rates/layer1", "weights/layers.0.connection", "weights/readout.connection"):
        assert tag in histograms


def test_snapshots_every_n_epochs(tmp_path):
    callbacks = [SpikeRasterLogger(every_n_epochs=2), ActivityHistogramLogger(every_n_epochs=2)]
    trainer = fit(tmp_path, callbacks, max_epochs=3, num_sanity_val_steps=1)
    events = read_events(trainer)
    # Epochs 0 and 2, after 1 and 3 epochs of training. The sanity check writes nothing.
    expected_steps = [BATCHES_PER_EPOCH, 3 * BATCHES_PER_EPOCH]
    assert [event.step for event in events.Images("raster/layer1")] == expected_steps
    assert [event.step for event in events.Histograms("rates/layer1")] == expected_steps


def test_samples_are_first_validation_samples(tmp_path):
    raster = SpikeRasterLogger(every_n_epochs=1, num_samples=3)
    fit(tmp_path, [raster], logger=False)
    data = PatternDataModule()
    data.setup()
    x, y = raster.samples
    assert torch.equal(x, data.val_set.tensors[0][:3])
    assert torch.equal(y, data.val_set.tensors[1][:3])


def test_training_samples_without_validation(tmp_path):
    trainer = fit(tmp_path, [SpikeRasterLogger(every_n_epochs=1)], limit_val_batches=0)
    assert "raster/layer1" in read_events(trainer).Tags()["images"]


def test_csv_logger_is_skipped(tmp_path):
    callbacks = [SpikeRasterLogger(every_n_epochs=1), ActivityHistogramLogger(every_n_epochs=1)]
    trainer = fit(tmp_path, callbacks, logger=CSVLogger(tmp_path))
    assert trainer.state.finished


def test_no_logger_is_skipped(tmp_path):
    callbacks = [SpikeRasterLogger(every_n_epochs=1), ActivityHistogramLogger(every_n_epochs=1)]
    trainer = fit(tmp_path, callbacks, logger=False)
    assert trainer.state.finished


def test_figures_are_closed(tmp_path):
    plt.close("all")
    fit(tmp_path, [SpikeRasterLogger(every_n_epochs=1)])
    assert plt.get_fignums() == []


def test_every_n_epochs_must_be_positive():
    with pytest.raises(ValueError, match="every_n_epochs"):
        SpikeRasterLogger(every_n_epochs=0)


def test_raster_figure_puts_time_on_x():
    spikes = torch.zeros(2, 5, 3)
    spikes[0, 4, 1] = 1.0  # sample 0: neuron 1 spikes at the last step
    figure = SpikeRasterLogger().raster_figure(spikes, torch.tensor([0, 1]), dt=1e-3, title="pop")
    axes = [ax for ax in figure.axes if ax.images]
    assert len(axes) == 2
    image = axes[0].images[0]
    assert image.get_array().shape == (3, 5)
    assert image.get_array()[1, 4] == 1.0
    assert image.get_extent() == [0.0, 5e-3, 0, 3]


def test_raster_figure_limits_neurons():
    figure = SpikeRasterLogger(max_neurons=4).raster_figure(torch.ones(1, 5, 10), None, dt=1e-3, title="pop")
    assert figure.axes[0].images[0].get_array().shape == (4, 5)


def test_readout_figure_highlights_target():
    readout = torch.randn(2, 6, 3)
    figure = readout_figure(readout, torch.tensor([2, 0]), dt=1e-3)
    first = figure.axes[0]
    assert len(first.lines) == 3
    assert first.lines[2].get_linewidth() > first.lines[0].get_linewidth()


def test_connection_weights_of_plain_module():
    module = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    assert list(connection_weights(module)) == ["0.weight", "1.weight"]


class OwnModule(pl.LightningModule):
    """Someone else's module: a ``network`` attribute and no ``dt`` of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.network = dense_network()
        self.network.build((NUM_INPUTS,), DT, 2)
        self.loss = MaxOverTimeCrossEntropy()

    def training_step(self, batch, batch_idx):
        return self.loss(self.network(batch[0]).output, batch[1])

    def validation_step(self, batch, batch_idx):
        return self.loss(self.network(batch[0]).output, batch[1])

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters())


def test_callbacks_with_own_module(tmp_path):
    callbacks = [SpikeRasterLogger(every_n_epochs=1), ActivityHistogramLogger(every_n_epochs=1)]
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=TensorBoardLogger(tmp_path, default_hp_metric=False),
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(OwnModule(), datamodule=PatternDataModule())
    tags = read_events(trainer).Tags()
    assert "raster/layer1" in tags["images"]
    assert "rates/layer1" in tags["histograms"]
