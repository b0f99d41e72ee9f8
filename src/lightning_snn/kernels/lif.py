"""Fused sequence operator for current-based LIF neurons.

It runs the same recurrence as :meth:`lightning_snn.nn.neurons.lif.LIF.step`, one time step after
another, with ``U_t``, ``I_t`` the state before step ``t`` and ``P_t`` the drive pending at step ``t``::

    S_t     = H(U_t - threshold)
    I_{t+1} = lambda_syn * I_t + P_t
    U_{t+1} = clamp((lambda_mem * U_t + (1 - lambda_mem) * I_t) * (1 - S_t))
    P_{t+1} = X_t + W (S_t * m_t)

where ``X`` is the feed-forward drive, ``W`` an optional linear recurrence and ``m`` an optional
dropout mask of the transmitted spikes. The forward pass records no autograd graph. For the backward
pass it keeps the membrane sequence ``U`` and the returned spikes, which the next layer's weight
gradient keeps anyway, plus ``I`` when the decays learn or the reset is differentiable. The backward
pass is the adjoint recurrence, run backwards in time::

    dL/dU_t = lambda_mem * g_t + surrogate'(U_t - threshold) * (dL/dS_t + m_t * W^T dL/dP_{t+1})
    dL/dI_t = lambda_syn * dL/dI_{t+1} + (1 - lambda_mem) * g_t
    dL/dP_t = dL/dI_{t+1},   dL/dX_t = dL/dP_{t+1}

with ``g_t = dL/dU_{t+1} * (1 - S_t) * [not clamped]``; a differentiable reset adds
``-dL/dU_{t+1} * [not clamped] * V_t`` to ``dL/dS_t``. Each step applies the same elementary float
operations as the step function, so spikes and states equal those of the plain loop bit for bit.
Gradients equal autograd's up to float rounding.
"""

from typing import NamedTuple, Optional, Union

import torch
from torch import Tensor

from lightning_snn.kernels._reduce import as_constant, decay_gradient, needs_grad
from lightning_snn.kernels.recurrence import LinearRecurrence
from lightning_snn.surrogate import SurrogateSpike

Decay = Union[float, Tensor]
# Elements per block of the backward pass's vectorised part: 2^16 float32 values are 256 kB per
# temporary, which fits in a typical L2 cache (8 steps of a batch of 64 x 128 neurons).
_CHUNK_ELEMENTS = 1 << 16


class LIFSequenceOutput(NamedTuple):
    spikes: Tensor
    """Spikes ``S_t`` of every step, ``(batch, time, *shape)``."""
    mem: Tensor
    """Membrane potential after the last step."""
    syn: Tensor
    """Synaptic current after the last step."""
    pending: Tensor
    """Drive produced at the last step, which the next step would integrate."""


class _LIFOptions(NamedTuple):
    threshold: float
    surrogate: SurrogateSpike
    diff_reset: bool
    clamp_max: Optional[float]
    recurrence: Optional[LinearRecurrence]


def supports_surrogate(surrogate: SurrogateSpike) -> bool:
    """Return True when ``surrogate`` fires with the Heaviside step and its gradient is ``grad(x)``.

    Surrogates with another firing rule (several or stochastic spikes) run in the plain loop.
    """
    cls = type(surrogate)
    return (
        cls.forward is SurrogateSpike.forward
        and cls._fire is SurrogateSpike._fire
        and cls._pseudo_derivative is SurrogateSpike._pseudo_derivative
    )


class _LIFSequence(torch.autograd.Function):
    # The saved sequences and the adjoint buffer are time-major, (time, batch, *shape), so that every
    # per-step slice is contiguous. Convolutions would otherwise copy each strided slice first.

    @staticmethod
    def forward(ctx, drive, mem, syn, pending, decay_mem, decay_syn, weight, mask, options):
        recurrence = options.recurrence
        num_steps = drive.shape[1]
        keep_syn_sequence = needs_grad(decay_mem) or needs_grad(decay_syn) or options.diff_reset
        ctx.options = options
        ctx.decays = (decay_mem, decay_syn)
        threshold = as_constant(options.threshold, drive)
        clamp_max = None if options.clamp_max is None else as_constant(options.clamp_max, drive)
        one_minus_decay_mem = as_constant(1.0 - decay_mem, drive)
        decay_mem, decay_syn = as_constant(decay_mem, drive), as_constant(decay_syn, drive)

        # U_t (and I_t) before every step t: all that the backward pass needs besides the inputs.
        time_major = (num_steps, *mem.shape)
        mem_sequence = drive.new_empty(time_major)
        syn_sequence = drive.new_empty(time_major) if keep_syn_sequence else None
        not_clamped = drive.new_empty(time_major) if clamp_max is not None else None
        spikes = drive.new_empty(drive.shape)

        mem_sequence[0].copy_(mem)
        if syn_sequence is not None:
            syn_sequence[0].copy_(syn)
        scratch = torch.empty_like(mem)
        keep = torch.empty_like(mem)
        step_spikes = torch.empty_like(mem)
        # Work step by step on (batch, *shape) slices, which stay in cache, because whole-sequence
        # temporaries would each cost a fresh allocation. Comparisons write float 0/1 directly, because
        # boolean masks take slower kernels.
        for t in range(num_steps):
            last = t == num_steps - 1
            # H(U - threshold) and 1 - H(U - threshold), as the surrogate's strict step computes them.
            if recurrence is None:
                torch.gt(mem, threshold, out=spikes[:, t])
            else:
                # The recurrence reads a contiguous copy, so the strided output slice is not copied.
                torch.gt(mem, threshold, out=step_spikes)
                spikes[:, t].copy_(step_spikes)
            torch.le(mem, threshold, out=keep)

            # Same elementary operations as LIF.step, so the result matches it bit for bit.
            new_mem = torch.mul(mem, decay_mem, out=None if last else mem_sequence[t + 1])
            new_mem.add_(torch.mul(syn, one_minus_decay_mem, out=scratch))
            new_mem.mul_(keep)
            if not_clamped is not None:
                torch.le(new_mem, clamp_max, out=not_clamped[t])
                new_mem.clamp_(max=clamp_max)

            syn_out = None if (last or syn_sequence is None) else syn_sequence[t + 1]
            new_syn = torch.mul(syn, decay_syn, out=syn_out)
            new_syn.add_(pending)

            if recurrence is None:
                pending = drive[:, t]
            else:
                transmitted = step_spikes if mask is None else step_spikes * mask[:, t]
                pending = drive[:, t] + recurrence.project(weight, transmitted)
            mem, syn = new_mem, new_syn

        if recurrence is None:
            pending = pending.clone()

        ctx.save_for_backward(mem_sequence, syn_sequence, not_clamped, weight, mask, spikes)
        return spikes, mem, syn, pending

    @staticmethod
    def backward(ctx, grad_spikes, grad_mem, grad_syn, grad_pending):
        options = ctx.options
        recurrence, surrogate = options.recurrence, options.surrogate
        mem_sequence, syn_sequence, not_clamped, weight, mask, spikes = ctx.saved_tensors
        num_steps = mem_sequence.shape[0]
        original_decay_mem, original_decay_syn = ctx.decays
        threshold = as_constant(options.threshold, mem_sequence)
        one_minus_decay_mem = as_constant(1.0 - original_decay_mem, mem_sequence)
        decay_mem = as_constant(original_decay_mem, mem_sequence)
        decay_syn = as_constant(original_decay_syn, mem_sequence)

        # adjoint_syn[k] contains dL/dI_k for k <= T and dL/dP_T at k = T + 1, so that
        # dL/dX_t = dL/dP_{t+1} = adjoint_syn[t + 2] for every t.
        adjoint_syn = mem_sequence.new_empty((num_steps + 2, *mem_sequence.shape[1:]))
        adjoint_syn[num_steps].copy_(grad_syn)
        adjoint_syn[num_steps + 1].copy_(grad_pending)
        adjoint_mem = grad_mem
        grad_membrane_input = None
        if needs_grad(original_decay_mem):
            grad_membrane_input = torch.empty_like(mem_sequence)
        chunk_steps = max(1, min(num_steps, _CHUNK_ELEMENTS // mem_sequence[0].numel()))
        keep_buffer = mem_sequence.new_empty((chunk_steps, *mem_sequence.shape[1:]))

        for t in reversed(range(num_steps)):
            if t == num_steps - 1 or (t + 1) % chunk_steps == 0:
                # Everything that does not depend on the adjoint state is computed for a chunk of
                # steps at once: fewer, larger ops, on blocks small enough to stay in cache.
                start = (t // chunk_steps) * chunk_steps
                chunk = slice(start, t + 1)
                pseudo_derivative = surrogate.grad(torch.sub(mem_sequence[chunk], threshold))
                direct = grad_spikes[:, chunk].transpose(0, 1) * pseudo_derivative
                keep = torch.le(mem_sequence[chunk], threshold, out=keep_buffer[: t + 1 - start])
                if not_clamped is not None:
                    keep.mul_(not_clamped[chunk])
            index = t - start

            # Gradient w.r.t. the membrane input V_t: blocked where the neuron reset or was clamped.
            grad_v = adjoint_mem * keep[index]
            if grad_membrane_input is not None:
                grad_membrane_input[t].copy_(grad_v)

            spike_grad = None
            if recurrence is not None:
                spike_grad = recurrence.transpose(weight, adjoint_syn[t + 2])
                if mask is not None:
                    spike_grad.mul_(mask[:, t])
            if options.diff_reset:
                grad_reset = adjoint_mem if not_clamped is None else adjoint_mem * not_clamped[t]
                membrane_input = mem_sequence[t] * decay_mem
                membrane_input.add_(syn_sequence[t] * one_minus_decay_mem)
                reset_grad = grad_reset * membrane_input
                spike_grad = -reset_grad if spike_grad is None else spike_grad.sub_(reset_grad)

            new_adjoint_mem = torch.addcmul(direct[index], grad_v, decay_mem)
            if spike_grad is not None:
                new_adjoint_mem.addcmul_(spike_grad, pseudo_derivative[index])

            syn_slot = adjoint_syn[t]
            torch.mul(adjoint_syn[t + 1], decay_syn, out=syn_slot)
            syn_slot.addcmul_(grad_v, one_minus_decay_mem)
            adjoint_mem = new_adjoint_mem

        grad_drive = adjoint_syn[2:].transpose(0, 1)
        grad_weight = None
        if recurrence is not None and weight.requires_grad:
            transmitted = spikes if mask is None else spikes * mask
            grad_weight = recurrence.weight_gradient(
                weight, transmitted.flatten(0, 1), grad_drive.flatten(0, 1)
            )
        grad_decay_mem = None
        if grad_membrane_input is not None:
            grad_decay_mem = decay_gradient(original_decay_mem, grad_membrane_input * (mem_sequence - syn_sequence))
        grad_decay_syn = None
        if needs_grad(original_decay_syn):
            grad_decay_syn = decay_gradient(original_decay_syn, adjoint_syn[1 : num_steps + 1] * syn_sequence)

        return (
            grad_drive,
            adjoint_mem,
            adjoint_syn[0],
            adjoint_syn[1],
            grad_decay_mem,
            grad_decay_syn,
            grad_weight,
            None,
            None,
        )


def lif_sequence(
    drive: Tensor,
    mem: Tensor,
    syn: Tensor,
    pending: Tensor,
    decay_mem: Decay,
    decay_syn: Decay,
    *,
    threshold: float,
    surrogate: SurrogateSpike,
    diff_reset: bool = False,
    clamp_max: Optional[float] = None,
    recurrence: Optional[LinearRecurrence] = None,
    recurrent_weight: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
) -> LIFSequenceOutput:
    """Run LIF neurons over a whole drive sequence with a hand-written backward pass.

    Args:
        drive: Feed-forward drive ``X`` of shape ``(batch, time, *shape)``; ``X_t`` arrives at step
            ``t + 1``.
        mem: Membrane potential before the first step, ``(batch, *shape)``.
        syn: Synaptic current before the first step.
        pending: Drive that arrives at the first step.
        decay_mem: Per-step membrane decay ``exp(-dt / tau_mem)``; a float or a tensor broadcastable
            to ``shape`` (learned when it requires a gradient).
        decay_syn: Per-step synaptic decay ``exp(-dt / tau_syn)``, like ``decay_mem``.
        threshold: Firing threshold.
        surrogate: Heaviside spike function whose ``grad(x)`` is the surrogate derivative (see
            :func:`supports_surrogate`).
        diff_reset: Backpropagate through the reset term.
        clamp_max: Clip the membrane from above at this value after each update; None for no clip.
        recurrence: Recurrent connection of the population, fed with the transmitted spikes.
        recurrent_weight: Weight of ``recurrence``.
        mask: Dropout mask of the transmitted spikes, ``(batch, time, *shape)``; it scales only what
            the recurrence receives, not the returned spikes.

    Returns:
        The spike sequence and the final membrane, current and pending drive.
    """
    if drive.dim() < 3 or drive.shape[1] < 1:
        raise ValueError(f"drive must be (batch, time >= 1, *shape), got shape {tuple(drive.shape)}.")
    if (recurrence is None) != (recurrent_weight is None):
        raise ValueError("Give recurrence and recurrent_weight together, or neither.")
    options = _LIFOptions(float(threshold), surrogate, bool(diff_reset), clamp_max, recurrence)
    spikes, mem, syn, pending = _LIFSequence.apply(
        drive, mem, syn, pending, decay_mem, decay_syn, recurrent_weight, mask, options
    )
    return LIFSequenceOutput(spikes, mem, syn, pending)
