"""Fused sequence operator for the non-spiking leaky readout.

It runs the recurrence of :meth:`lightning_snn.nn.neurons.readout.LeakyReadout.step`, with ``Y_t``,
``I_t`` the state before step ``t`` and ``P_t`` the drive pending at step ``t``::

    I_{t+1} = lambda_syn * I_t + P_t
    Y_{t+1} = lambda_mem * Y_t + (1 - lambda_mem) * I_t
    P_{t+1} = X_t

and returns ``O_t = Y_{t+1}`` for every step. The map is linear, so the backward pass is the same
filter run backwards in time::

    dL/dY_t = lambda_mem * dL/dY_{t+1} + dL/dO_{t-1}
    dL/dI_t = lambda_syn * dL/dI_{t+1} + (1 - lambda_mem) * dL/dY_{t+1}
    dL/dX_t = dL/dP_{t+1} = dL/dI_{t+2}
"""

from typing import NamedTuple, Union

import torch
from torch import Tensor

from lightning_snn.kernels._reduce import as_constant, decay_gradient, needs_grad

Decay = Union[float, Tensor]


class ReadoutSequenceOutput(NamedTuple):
    output: Tensor
    """Readout potential after every step, ``(batch, time, *shape)``."""
    mem: Tensor
    """Readout potential after the last step."""
    syn: Tensor
    """Synaptic current after the last step."""
    pending: Tensor
    """Drive produced at the last step."""


class _ReadoutSequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, drive, mem, syn, pending, decay_mem, decay_syn):
        num_steps = drive.shape[1]
        keep_syn_sequence = needs_grad(decay_mem) or needs_grad(decay_syn)
        ctx.decays = (decay_mem, decay_syn)
        one_minus_decay_mem = as_constant(1.0 - decay_mem, drive)
        decay_mem, decay_syn = as_constant(decay_mem, drive), as_constant(decay_syn, drive)

        output = drive.new_empty(drive.shape)
        syn_sequence = drive.new_empty(drive.shape) if keep_syn_sequence else None
        if syn_sequence is not None:
            syn_sequence[:, 0].copy_(syn)
        scratch = torch.empty_like(mem)
        initial_mem = mem
        for t in range(num_steps):
            # Same elementary operations as LeakyReadout.step.
            new_mem = torch.mul(mem, decay_mem, out=output[:, t])
            new_mem.add_(torch.mul(syn, one_minus_decay_mem, out=scratch))

            last = t == num_steps - 1
            syn_out = None if (last or syn_sequence is None) else syn_sequence[:, t + 1]
            new_syn = torch.mul(syn, decay_syn, out=syn_out)
            new_syn.add_(pending)

            pending = drive[:, t]
            mem, syn = new_mem, new_syn

        ctx.save_for_backward(initial_mem, output, syn_sequence)
        return output, mem.clone(), syn, pending.clone()

    @staticmethod
    def backward(ctx, grad_output, grad_mem, grad_syn, grad_pending):
        initial_mem, output, syn_sequence = ctx.saved_tensors
        batch_size, num_steps = output.shape[:2]
        original_decay_mem, original_decay_syn = ctx.decays
        one_minus_decay_mem = as_constant(1.0 - original_decay_mem, output)
        decay_mem = as_constant(original_decay_mem, output)
        decay_syn = as_constant(original_decay_syn, output)

        # adjoint_syn[:, k] is dL/dI_k for k <= T and dL/dP_T at k = T + 1 (see the LIF kernel);
        # adjoint_mem[:, k] is dL/dY_{k+1}.
        adjoint_syn = output.new_empty((batch_size, num_steps + 2, *output.shape[2:]))
        adjoint_syn[:, num_steps].copy_(grad_syn)
        adjoint_syn[:, num_steps + 1].copy_(grad_pending)
        adjoint_mem = output.new_empty(output.shape)
        torch.add(grad_mem, grad_output[:, num_steps - 1], out=adjoint_mem[:, num_steps - 1])

        for t in reversed(range(num_steps)):
            syn_slot = adjoint_syn[:, t]
            torch.mul(adjoint_syn[:, t + 1], decay_syn, out=syn_slot)
            syn_slot.addcmul_(adjoint_mem[:, t], one_minus_decay_mem)
            if t > 0:
                torch.addcmul(grad_output[:, t - 1], adjoint_mem[:, t], decay_mem, out=adjoint_mem[:, t - 1])
        grad_initial_mem = adjoint_mem[:, 0] * decay_mem

        grad_decay_mem = None
        if needs_grad(original_decay_mem):
            previous_mem = torch.cat([initial_mem.unsqueeze(1), output[:, :-1]], dim=1)
            grad_decay_mem = decay_gradient(original_decay_mem, adjoint_mem * (previous_mem - syn_sequence))
        grad_decay_syn = None
        if needs_grad(original_decay_syn):
            grad_decay_syn = decay_gradient(original_decay_syn, adjoint_syn[:, 1 : num_steps + 1] * syn_sequence)

        return (
            adjoint_syn[:, 2:],
            grad_initial_mem,
            adjoint_syn[:, 0],
            adjoint_syn[:, 1],
            grad_decay_mem,
            grad_decay_syn,
        )


def readout_sequence(
    drive: Tensor, mem: Tensor, syn: Tensor, pending: Tensor, decay_mem: Decay, decay_syn: Decay
) -> ReadoutSequenceOutput:
    """Run leaky readout units over a whole drive sequence with a hand-written backward pass.

    Args:
        drive: Feed-forward drive ``(batch, time, *shape)``; ``X_t`` arrives at step ``t + 1``.
        mem: Readout potential before the first step, ``(batch, *shape)``.
        syn: Synaptic current before the first step.
        pending: Drive that arrives at the first step.
        decay_mem: Per-step decay ``exp(-dt / tau_mem)`` of the readout potential; a float or a
            tensor broadcastable to ``shape`` (learned when it requires a gradient).
        decay_syn: Per-step synaptic decay ``exp(-dt / tau_syn)``, like ``decay_mem``.

    Returns:
        The readout sequence and the final potential, current and pending drive.
    """
    if drive.dim() < 3 or drive.shape[1] < 1:
        raise ValueError(f"drive must be (batch, time >= 1, *shape), got shape {tuple(drive.shape)}.")
    output, mem, syn, pending = _ReadoutSequence.apply(drive, mem, syn, pending, decay_mem, decay_syn)
    return ReadoutSequenceOutput(output, mem, syn, pending)
