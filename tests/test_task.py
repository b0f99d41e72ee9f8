"""SNNClassifier: training, logging, constraints, priming, initialization, checkpoints, prediction."""

import functools
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from jsonargparse import ArgumentParser
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import OptimizerCallable
from task_helpers import (
    DT,
    NUM_INPUTS,
    NUM_STEPS,
    PatternDataModule,
    RecordingLogger,
    dales_network,
    dense_network,
    pattern_samples,
)
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_snn.init import FluctuationDrivenCenteredNormal
from lightning_snn.nn import LIF, DenseLayer, LeakyReadout, ReadoutLayer, SpikingNetwork
from lightning_snn.optim import SMORMS3
from lightning_snn.tasks import SNNClassifier, mean_firing_rates, neuron_firing_rates, spiking_populations
from lightning_snn.tasks.activity import eager_execution


def make_model(network=None, **kwargs) -> SNNClassifier:
    network = network if network is not None else dense_network()
    return SNNClassifier(
        network, input_shape=(NUM_INPUTS,), num_classes=2, dt=DT, num_steps=NUM_STEPS, **kwargs
    )


def make_trainer(tmp_path, **kwargs) -> pl.Trainer:
    options = dict(
        accelerator="cpu",
        max_epochs=1,
        default_root_dir=tmp_path,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    options.update(kwargs)
    return pl.Trainer(**options)


class CountingInitializer(FluctuationDrivenCenteredNormal):
    """Fluctuation-driven initializer that counts its calls."""

    def __init__(self) -> None:
        super().__init__(sigma_u=1.0)
        self.calls = 0

    def initialize(self, target, data=None) -> None:
        self.calls += 1
        super().initialize(target, data)


# --------------------------------------------------------------------------------------------------
# Firing-rate helpers
# --------------------------------------------------------------------------------------------------


def test_mean_firing_rate_known_pattern():
    spikes = torch.zeros(2, 10, 4)
    spikes[0, :, 0] = 1.0  # 10 spikes among 2 * 10 * 4 = 80 entries
    rates = mean_firing_rates({"pop": spikes}, dt=1e-3)
    assert rates["pop"].item() == pytest.approx(10 / 80 / 1e-3)


def test_neuron_firing_rates_known_pattern():
    spikes = torch.zeros(2, 10, 4)
    spikes[0, :, 0] = 1.0  # neuron 0 spikes in 10 of its 20 (sample, step) entries
    spikes[1, 3, 2] = 1.0  # neuron 2 spikes once in 20 entries
    rates = neuron_firing_rates({"pop": spikes}, dt=1e-3)
    assert rates["pop"].tolist() == pytest.approx([500.0, 0.0, 50.0, 0.0])


def test_firing_rates_reject_nonpositive_dt():
    with pytest.raises(ValueError, match="dt"):
        mean_firing_rates({"pop": torch.zeros(1, 2, 3)}, dt=0.0)


def test_spiking_populations_skip_leaky_readout_layer():
    network = SpikingNetwork(
        [DenseLayer(4, LeakyReadout(), name="integrator"), DenseLayer(3, LIF(), name="lif")],
        ReadoutLayer(2),
        input_shape=5,
        dt=DT,
    )
    output = network(torch.zeros(1, 3, 5))
    assert set(output.spikes) == {"integrator", "lif"}
    assert list(spiking_populations(network, output.spikes)) == ["lif"]


# --------------------------------------------------------------------------------------------------
# Construction
# --------------------------------------------------------------------------------------------------


def test_unbuilt_network_is_built_from_arguments():
    model = make_model()
    assert model.network.is_built
    assert model.network.readout.size == (2,)


def test_unbuilt_network_without_dt_raises():
    with pytest.raises(ValueError, match="dt"):
        SNNClassifier(dense_network(), input_shape=(NUM_INPUTS,), num_classes=2)


def test_readout_without_size_needs_num_classes():
    with pytest.raises(ValueError, match="num_classes"):
        SNNClassifier(dense_network(), input_shape=(NUM_INPUTS,), dt=DT)


def test_num_classes_must_match_readout():
    network = dense_network()
    network.build((NUM_INPUTS,), DT, 3)
    with pytest.raises(ValueError, match="num_classes is 2"):
        SNNClassifier(network, num_classes=2)


def test_built_network_supplies_dt_and_classes():
    network = dense_network()
    network.build((NUM_INPUTS,), DT, 3)
    model = SNNClassifier(network)
    assert model.dt == DT
    assert model.num_classes == 3


def test_negative_priming_epochs_raises():
    with pytest.raises(ValueError, match="priming_epochs"):
        make_model(priming_epochs=-1)


def test_hparams_keep_plain_values_only():
    sgd = functools.partial(torch.optim.SGD, lr=0.1)
    model = make_model(optimizer=sgd, initializer=CountingInitializer())
    for name in ("network", "optimizer", "initializer"):
        assert name not in model.hparams
    assert model.hparams.dt == DT
    assert model.hparams.input_shape == (NUM_INPUTS,)


def test_compile_keeps_state_dict_keys():
    eager = make_model()
    compiled = make_model(compile=True)
    assert list(compiled.state_dict()) == list(eager.state_dict())


def test_compiled_forward_matches_eager():
    # Five steps keep the compilation to about ten seconds on a cold cache.
    model = make_model(compile=True)
    x = torch.bernoulli(torch.full((4, 5, NUM_INPUTS), 0.2), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        compiled = model(x).output
        with eager_execution():
            eager = model(x).output
    assert torch.allclose(compiled, eager, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# Optimizers and schedulers
# --------------------------------------------------------------------------------------------------


def test_default_optimizer_is_adam():
    optimizer = make_model().configure_optimizers()
    assert isinstance(optimizer, torch.optim.Adam)
    assert optimizer.defaults["lr"] == 1e-3


def test_reduce_on_plateau_gets_monitor():
    model = make_model(scheduler=torch.optim.lr_scheduler.ReduceLROnPlateau, scheduler_monitor="val/acc")
    config = model.configure_optimizers()
    assert config["lr_scheduler"]["monitor"] == "val/acc"


def test_smorms3_by_class_path():
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--optimizer", type=OptimizerCallable)
    smorms3 = {"class_path": "lightning_snn.optim.SMORMS3", "init_args": {"lr": 5e-3}}
    config = parser.parse_object({"optimizer": smorms3})
    factory = parser.instantiate(config).optimizer
    optimizer = make_model(optimizer=factory).configure_optimizers()
    assert isinstance(optimizer, SMORMS3)
    assert optimizer.defaults["lr"] == 5e-3


# --------------------------------------------------------------------------------------------------
# Training and logging
# --------------------------------------------------------------------------------------------------


def test_training_reduces_validation_loss(tmp_path):
    data = PatternDataModule()
    data.setup()
    model = make_model(optimizer=functools.partial(torch.optim.Adam, lr=2e-2))
    model.initialize_from_batch(next(iter(data.train_dataloader())))
    trainer = make_trainer(tmp_path, max_epochs=8)

    before = trainer.validate(model, datamodule=data, verbose=False)[0]
    trainer.fit(model, datamodule=data)
    after = trainer.validate(model, datamodule=data, verbose=False)[0]

    assert after["val/task_loss"] < 0.5 * before["val/task_loss"]
    assert after["val/acc"] >= 0.9


def test_logged_metric_names(tmp_path):
    logger = RecordingLogger()
    trainer = make_trainer(tmp_path, logger=logger, limit_train_batches=2)
    model = make_model()
    data = PatternDataModule()
    trainer.fit(model, datamodule=data)
    trainer.test(model, datamodule=data, verbose=False)

    logged = {key for _, metrics in logger.history for key in metrics}
    for stage in ("train", "val", "test"):
        for name in ("loss", "task_loss", "reg_loss", "acc", "rate/layer1"):
            assert f"{stage}/{name}" in logged
    assert "train/priming" in logged
    assert "init/rate/layer1" in logged


def test_unset_data_attributes_do_not_clash_with_datamodule(tmp_path):
    # PatternDataModule saves num_steps, dt and num_classes as hyperparameters, like the library's
    # DataModules. The Trainer rejects a key saved by both with different values.
    model = SNNClassifier(dense_network(), input_shape=(NUM_INPUTS,), num_classes=2, dt=DT)
    trainer = make_trainer(tmp_path, logger=RecordingLogger(), max_steps=1, limit_val_batches=0)
    trainer.fit(model, datamodule=PatternDataModule())
    assert trainer.logger.hyperparams["num_steps"] == NUM_STEPS


def test_total_loss_is_task_plus_reg(tmp_path):
    trainer = make_trainer(tmp_path, limit_train_batches=1, max_epochs=1)
    model = make_model()
    trainer.fit(model, datamodule=PatternDataModule())
    metrics = trainer.callback_metrics
    expected = metrics["val/task_loss"].item() + metrics["val/reg_loss"].item()
    assert metrics["val/loss"].item() == pytest.approx(expected)


class FixedSpikeNetwork(nn.Module):
    """A plain module: a linear readout of the input and a fixed spike pattern.

    Neuron 0 of population "pop" spikes every 4th step, the other 3 neurons never, so the population
    fires 5 spikes per 20 steps x 4 neurons = 1/16 per neuron and step.
    """

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(NUM_INPUTS, 2)

    def forward(self, x):
        spikes = torch.zeros(x.shape[0], x.shape[1], 4)
        spikes[:, ::4, 0] = 1.0
        return SimpleNamespace(output=self.linear(x), spikes={"pop": spikes})


def test_rate_of_plain_module_in_hz(tmp_path):
    model = SNNClassifier(FixedSpikeNetwork(), num_classes=2, dt=DT, initialize=False)
    loader = DataLoader(TensorDataset(*pattern_samples(8, seed=3)), batch_size=4)
    metrics = make_trainer(tmp_path).validate(model, dataloaders=loader, verbose=False)[0]
    assert metrics["val/rate/pop"] == pytest.approx(1 / 16 / DT)


def test_plain_module_trains_without_optional_methods(tmp_path):
    model = SNNClassifier(FixedSpikeNetwork(), num_classes=2, dt=DT, initialize=False)
    trainer = make_trainer(tmp_path, max_steps=2)
    trainer.fit(model, datamodule=PatternDataModule())
    assert trainer.global_step == 2


def test_plain_module_with_initialize_warns(tmp_path):
    model = SNNClassifier(FixedSpikeNetwork(), num_classes=2, dt=DT)
    with pytest.warns(UserWarning, match="initialize=False"):
        make_trainer(tmp_path, max_steps=1).fit(model, datamodule=PatternDataModule())


# --------------------------------------------------------------------------------------------------
# Constraints and carried state
# --------------------------------------------------------------------------------------------------


def dales_weights(model: SNNClassifier) -> list[torch.Tensor]:
    return [connection.weight for connection in model.network.layers[0].synapses.values()]


class ConstraintProbe(pl.Callback):
    """Record whether plain SGD would push Dale's weights negative, and the weights after each step."""

    def __init__(self) -> None:
        self.unconstrained_minimum = float("inf")
        self.minimum_after_batch = float("inf")

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        lr = optimizer.param_groups[0]["lr"]
        for weight in dales_weights(pl_module):
            if weight.grad is not None:
                stepped = weight.detach() - lr * weight.grad
                self.unconstrained_minimum = min(self.unconstrained_minimum, stepped.min().item())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        for weight in dales_weights(pl_module):
            self.minimum_after_batch = min(self.minimum_after_batch, weight.min().item())


def test_dales_weights_stay_nonnegative(tmp_path):
    huge_step = functools.partial(torch.optim.SGD, lr=1e3)
    model = make_model(dales_network(), optimizer=huge_step, initialize=False)
    probe = ConstraintProbe()
    trainer = make_trainer(tmp_path, max_steps=3, callbacks=[probe])
    trainer.fit(model, datamodule=PatternDataModule())
    assert probe.unconstrained_minimum < 0.0
    assert probe.minimum_after_batch >= 0.0


def test_constraints_once_per_optimizer_step(tmp_path):
    model = make_model(initialize=False)
    calls = []
    apply_constraints = model.network.apply_constraints
    model.network.apply_constraints = lambda: calls.append(model.global_step) or apply_constraints()
    trainer = make_trainer(tmp_path, limit_train_batches=4, accumulate_grad_batches=2, limit_val_batches=0)
    trainer.fit(model, datamodule=PatternDataModule())
    assert trainer.global_step == 2
    assert len(calls) == 2


class CarriedStateProbe(pl.Callback):
    """Record whether the hidden neurons carry state after training batches and before validation."""

    def __init__(self) -> None:
        self.carried_after_training = []
        self.carried_at_validation_start = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.carried_after_training.append(pl_module.network.layers[0].neuron._carried_state is not None)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if batch_idx == 0:
            carried = pl_module.network.layers[0].neuron._carried_state is not None
            self.carried_at_validation_start.append(carried)


def test_stateful_network_reset_before_validation(tmp_path):
    model = make_model(dense_network(stateful=True), initialize=False)
    probe = CarriedStateProbe()
    trainer = make_trainer(
        tmp_path, limit_train_batches=2, limit_val_batches=1, max_epochs=2, callbacks=[probe]
    )
    trainer.fit(model, datamodule=PatternDataModule())
    assert all(probe.carried_after_training)
    assert probe.carried_at_validation_start == [False, False]


# --------------------------------------------------------------------------------------------------
# Priming
# --------------------------------------------------------------------------------------------------


class GradientProbe(pl.Callback):
    """Compare the gradients of each step with those of the regularization loss alone."""

    def __init__(self) -> None:
        self.batch = None
        self.matches_reg_loss = {}
        self.readout_grad_norm = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batch = batch

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        network = pl_module.network
        parameters = [network.layers[0].connection.weight, network.readout.connection.weight]
        actual = [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in parameters]
        with torch.enable_grad():
            output = network(self.batch[0])
            reg_loss = network.regularization_loss(output)
            expected = torch.autograd.grad(reg_loss, parameters, allow_unused=True)
        expected = [torch.zeros_like(p) if g is None else g for p, g in zip(parameters, expected)]
        epoch = trainer.current_epoch
        matches = all(torch.allclose(a, e, atol=1e-7) for a, e in zip(actual, expected))
        self.matches_reg_loss[epoch] = self.matches_reg_loss.get(epoch, True) and matches
        self.readout_grad_norm[epoch] = actual[1].norm().item()


def test_priming_backpropagates_reg_loss_only(tmp_path):
    logger = RecordingLogger()
    model = make_model(priming_epochs=1, optimizer=functools.partial(torch.optim.SGD, lr=1e-2))
    probe = GradientProbe()
    trainer = make_trainer(
        tmp_path, logger=logger, limit_train_batches=2, limit_val_batches=1, max_epochs=2, callbacks=[probe]
    )
    trainer.fit(model, datamodule=PatternDataModule())

    assert probe.matches_reg_loss[0]
    assert probe.readout_grad_norm[0] == 0.0
    assert not probe.matches_reg_loss[1]
    assert probe.readout_grad_norm[1] > 0.0
    assert logger.values("train/priming") == [1.0, 0.0]


def test_priming_without_regularizers_raises(tmp_path):
    model = make_model(dense_network(regularized=False), priming_epochs=1)
    with pytest.raises(RuntimeError, match="priming_epochs=1"):
        make_trainer(tmp_path, max_steps=1).fit(model, datamodule=PatternDataModule())


# --------------------------------------------------------------------------------------------------
# Initialization and checkpoints
# --------------------------------------------------------------------------------------------------


def test_initialization_runs_on_fit(tmp_path):
    initializer = CountingInitializer()
    model = make_model(initializer=initializer)
    make_trainer(tmp_path, max_steps=1, limit_val_batches=0).fit(model, datamodule=PatternDataModule())
    assert initializer.calls == 1


def test_initialization_once_over_two_fits(tmp_path):
    initializer = CountingInitializer()
    model = make_model(initializer=initializer)
    make_trainer(tmp_path, max_steps=1, limit_val_batches=0).fit(model, datamodule=PatternDataModule())
    make_trainer(tmp_path, max_steps=1, limit_val_batches=0).fit(model, datamodule=PatternDataModule())
    assert initializer.calls == 1


def test_initialization_skipped_when_disabled(tmp_path):
    initializer = CountingInitializer()
    model = make_model(initializer=initializer, initialize=False)
    make_trainer(tmp_path, max_steps=1, limit_val_batches=0).fit(model, datamodule=PatternDataModule())
    assert initializer.calls == 0


def test_initialization_with_train_dataloaders(tmp_path):
    initializer = CountingInitializer()
    model = make_model(initializer=initializer)
    loader = DataLoader(TensorDataset(*pattern_samples(16, seed=0)), batch_size=8)
    make_trainer(tmp_path, max_steps=1).fit(model, train_dataloaders=loader)
    assert initializer.calls == 1


def test_initialization_rates_match_forward_pass():
    data = PatternDataModule()
    data.setup()
    batch = next(iter(data.train_dataloader()))
    model = make_model()
    rates = model.initialize_from_batch(batch)
    spikes = model.network(batch[0]).spikes["layer1"]
    assert rates["layer1"] == pytest.approx(spikes.sum().item() / spikes.numel() / DT)


def fit_and_save(tmp_path) -> tuple[SNNClassifier, str]:
    model = make_model()
    trainer = make_trainer(tmp_path, max_steps=2, limit_val_batches=0)
    trainer.fit(model, datamodule=PatternDataModule())
    path = str(tmp_path / "model.ckpt")
    trainer.save_checkpoint(path)
    return model, path


def test_initialization_skipped_when_resuming(tmp_path):
    _, path = fit_and_save(tmp_path)
    initializer = CountingInitializer()
    model = make_model(initializer=initializer)
    trainer = make_trainer(tmp_path, max_steps=3, max_epochs=2, limit_val_batches=0)
    trainer.fit(model, datamodule=PatternDataModule(), ckpt_path=path)
    assert trainer.global_step == 3
    assert initializer.calls == 0


def test_initialization_skipped_after_load_from_checkpoint(tmp_path):
    _, path = fit_and_save(tmp_path)
    initializer = CountingInitializer()
    model = SNNClassifier.load_from_checkpoint(path, network=dense_network(), initializer=initializer)
    make_trainer(tmp_path, max_steps=1, limit_val_batches=0).fit(model, datamodule=PatternDataModule())
    assert initializer.calls == 0


def test_checkpoint_reload_predicts_same_probabilities(tmp_path):
    model, path = fit_and_save(tmp_path)
    reloaded = SNNClassifier.load_from_checkpoint(path, network=dense_network(), weights_only=True)
    x = pattern_samples(8, seed=5)[0]
    model.eval()
    reloaded.eval()
    with torch.no_grad():
        expected = model.predict_step(x, 0)
        actual = reloaded.predict_step(x, 0)
    assert torch.equal(actual, expected)


def test_predict_returns_probabilities(tmp_path):
    model = make_model(initialize=False)
    batches = make_trainer(tmp_path).predict(model, datamodule=PatternDataModule())
    probabilities = torch.cat(batches)
    assert probabilities.shape == (32, 2)
    assert torch.allclose(probabilities.sum(dim=1), torch.ones(32))
