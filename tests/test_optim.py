import math

import pytest
import torch
from jsonargparse import ArgumentParser
from lightning.pytorch.cli import instantiate_class

from lightning_snn.optim import SMORMS3

GRADIENTS = [[1.0, -2.0], [0.5, 1.0], [2.0, 0.1]]


def smorms3_by_hand(start: list[float], gradients: list[list[float]], lr: float, eps: float) -> list[float]:
    """Unroll the SMORMS3 recurrence for each entry with plain Python floats."""
    result = []
    for index, value in enumerate(start):
        mem, g, g2 = 1.0, 0.0, 0.0
        for step_gradients in gradients:
            grad = step_gradients[index]
            r = 1 / (mem + 1)
            g = (1 - r) * g + r * grad
            g2 = (1 - r) * g2 + r * grad**2
            mem = 1 + mem * (1 - g**2 / (g2 + eps))
            lr_t = min(lr, g**2 / (g2 + eps))
            value = value - lr_t * grad / (math.sqrt(g2) + eps)
        result.append(value)
    return result


def run_smorms3(lr: float, eps: float = 1e-16) -> torch.Tensor:
    param = torch.nn.Parameter(torch.tensor([1.0, 2.0], dtype=torch.float64))
    optimizer = SMORMS3([param], lr=lr, eps=eps)
    for step_gradients in GRADIENTS:
        param.grad = torch.tensor(step_gradients, dtype=torch.float64)
        optimizer.step()
    return param.detach()


@pytest.mark.parametrize("lr", [0.5, 0.01])
def test_smorms3_three_steps(lr):
    # With lr = 0.5, the ratio g**2 / g2 caps some steps and lr the others.
    # With lr = 0.01, lr caps every step.
    expected = smorms3_by_hand([1.0, 2.0], GRADIENTS, lr=lr, eps=1e-16)

    assert run_smorms3(lr).tolist() == pytest.approx(expected, rel=1e-12)


def test_smorms3_first_step_closed_form():
    # After one step g = grad / 2 and g2 = grad**2 / 2, so g**2 / g2 = 1/2 and the step is
    # min(lr, 1/2) * sqrt(2) * sign(grad).
    param = torch.nn.Parameter(torch.tensor([1.0, 2.0], dtype=torch.float64))
    optimizer = SMORMS3([param], lr=0.1)
    param.grad = torch.tensor([3.0, -0.5], dtype=torch.float64)

    optimizer.step()

    assert param.tolist() == pytest.approx([1.0 - 0.1 * math.sqrt(2), 2.0 + 0.1 * math.sqrt(2)])


def test_smorms3_skips_missing_grad():
    used = torch.nn.Parameter(torch.ones(2))
    unused = torch.nn.Parameter(torch.ones(2))
    optimizer = SMORMS3([used, unused], lr=0.1)
    used.grad = torch.ones(2)

    optimizer.step()

    assert torch.equal(unused.detach(), torch.ones(2))
    assert unused not in optimizer.state


def test_smorms3_closure_loss():
    param = torch.nn.Parameter(torch.tensor([3.0]))
    optimizer = SMORMS3([param], lr=0.1)

    def closure():
        optimizer.zero_grad()
        loss = (param**2).sum()
        loss.backward()
        return loss

    loss = optimizer.step(closure)

    assert loss.item() == pytest.approx(9.0)
    assert param.item() == pytest.approx(3.0 - 0.1 * math.sqrt(2))


@pytest.mark.parametrize("kwargs", [{"lr": 0.0}, {"lr": -1e-3}, {"eps": -1e-8}])
def test_smorms3_invalid_arguments(kwargs):
    with pytest.raises(ValueError):
        SMORMS3([torch.nn.Parameter(torch.ones(1))], **kwargs)


def test_smorms3_class_path():
    params = [torch.nn.Parameter(torch.ones(2))]

    config = {"class_path": "lightning_snn.optim.SMORMS3", "init_args": {"lr": 5e-3}}

    optimizer = instantiate_class(params, config)

    assert isinstance(optimizer, SMORMS3)
    assert optimizer.param_groups[0]["lr"] == 5e-3


def test_smorms3_cli_arguments():
    parser = ArgumentParser()
    parser.add_subclass_arguments(torch.optim.Optimizer, "optimizer", skip={"params"}, instantiate=False)

    config = parser.parse_args(["--optimizer=lightning_snn.optim.SMORMS3", "--optimizer.lr=5e-3"])

    assert config.optimizer.class_path == "lightning_snn.optim.SMORMS3"
    assert config.optimizer.init_args.lr == 5e-3
