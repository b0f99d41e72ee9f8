"""Fused sequence operator for adaptive LIF neurons (LIF with a spike-triggered adaptation current).

It runs the same recurrence as :meth:`lightning_snn.nn.neurons.adaptive.AdaptiveLIF.step`, one time
step after another. ``U_t``, ``I_t``, ``A_t`` are the membrane, current and adaptation trace before
step ``t``, ``L_t`` the spikes of the step before and ``P_t`` the drive pending at step ``t``::

    S_t     = H(U_t - threshold)
    I_{t+1} = lambda_syn * I_t + P_t
    A_{t+1} = lambda_ada * A_t + c * L_t
    V_t     = lambda_mem * U_t + (1 - lambda_mem) * (I_t - b * A_t)
    U_{t+1} = clamp(V_t * (1 - S_t))
    L_{t+1} = S_t
    P_{t+1} = X_t + W (S_t * m_t)

where ``X`` is the feed-forward drive, ``b`` the adaptation strength, ``c`` the factor that scales a
spike entering the trace, ``W`` an optional linear recurrence and ``m`` an optional dropout mask of
the transmitted spikes. The forward pass records no autograd graph. For the backward pass it keeps the
membrane sequence ``U`` and the returned spikes, plus ``I`` and ``A`` when a decay or the strength
learns or the reset is differentiable (each of these keeps only the sequences its gradient reads).

The backward pass is the adjoint recurrence, run backwards in time. With ``G_t`` the gradient that
arrives at the returned spikes ``S_t`` and ``g_t = dL/dU_{t+1} * (1 - S_t) * [not clamped]`` the
gradient w.r.t. ``V_t``::

    dL/dS_t = G_t + dL/dL_{t+1} + m_t * W^T dL/dP_{t+1}
    dL/dU_t = lambda_mem * g_t + surrogate'(U_t - threshold) * dL/dS_t
    dL/dI_t = lambda_syn * dL/dI_{t+1} + (1 - lambda_mem) * g_t
    dL/dA_t = lambda_ada * dL/dA_{t+1} - b * (1 - lambda_mem) * g_t
    dL/dL_t = c * dL/dA_{t+1}
    dL/dP_t = dL/dI_{t+1},   dL/dX_t = dL/dP_{t+1}

The term ``dL/dL_{t+1}`` carries the gradient from the adaptation trace back into the spike of step
``t``. A differentiable reset adds ``-dL/dU_{t+1} * [not clamped] * V_t`` to ``dL/dS_t``. The
parameter gradients are sums over batch and time::

    dL/dlambda_mem = sum g_t * (U_t - I_t + b * A_t)
    dL/dlambda_syn = sum dL/dI_{t+1} * I_t
    dL/dlambda_ada = sum dL/dA_{t+1} * A_t
    dL/dc          = sum dL/dA_{t+1} * L_t
    dL/db          = -sum (1 - lambda_mem) * g_t * A_t

Each forward step applies the same elementary float operations as the step function, so spikes and
states equal those of the plain loop bit for bit. Gradients equal autograd's up to float rounding.
"""

from typing import NamedTuple, Optional, Union

import torch
from torch import Tensor

from lightning_snn.kernels._reduce import as_constant, needs_grad
from lightning_snn.kernels.lif import _CHUNK_ELEMENTS, supports_surrogate
from lightning_snn.kernels.recurrence import LinearRecurrence
from lightning_snn.surrogate import SurrogateSpike

FloatOrTensor = Union[float, Tensor]


class AdaptiveLIFSequenceOutput(NamedTuple):
    spikes: Tensor
    """Spikes ``S_t`` of every step, ``(batch, time, *shape)``."""
    mem: Tensor
    """Membrane potential after the last step."""
    syn: Tensor
    """Synaptic current after the last step."""
    ada: Tensor
    """Adaptation trace after the last step."""
    last_spikes: Tensor
    """Spikes of the last step, which charge the adaptation trace at the next step."""
    pending: Tensor
    """Drive produced at the last step, which the next step would integrate."""


class _AdaptiveOptions(NamedTuple):
    threshold: float
    surrogate: SurrogateSpike
    diff_reset: bool
    clamp_max: Optional[float]
    recurrence: Optional[LinearRecurrence]


def _is_one(value: FloatOrTensor) -> bool:
    """Return True for the float 1.0, whose products the kernel can skip without changing a bit."""
    return not isinstance(value, Tensor) and value == 1.0


class _AdaptiveLIFSequence(torch.autograd.Function):
    # The saved sequences and the adjoint buffers are time-major, (time, batch, *shape), so that every
    # per-step slice is contiguous. Convolutions would otherwise copy each strided slice first.

    @staticmethod
    def forward(
        ctx,
        drive,
        mem,
        syn,
        ada,
        last_spikes,
        pending,
        decay_mem,
        decay_syn,
        decay_ada,
        ada_input_scale,
        strength,
        weight,
        mask,
        options,
    ):
        recurrence = options.recurrence
        num_steps = drive.shape[1]
        learns_membrane_input = needs_grad(decay_mem) or needs_grad(strength)
        keep_syn_sequence = learns_membrane_input or needs_grad(decay_syn) or options.diff_reset
        keep_ada_sequence = learns_membrane_input or needs_grad(decay_ada) or options.diff_reset
        ctx.options = options
        ctx.parameters = (decay_mem, decay_syn, decay_ada, ada_input_scale, strength)

        threshold = as_constant(options.threshold, drive)
        clamp_max = None if options.clamp_max is None else as_constant(options.clamp_max, drive)
        one_minus_decay_mem = as_constant(1.0 - decay_mem, drive)
        scale_input = not _is_one(ada_input_scale)
        decay_mem, decay_syn = as_constant(decay_mem, drive), as_constant(decay_syn, drive)
        decay_ada, strength = as_constant(decay_ada, drive), as_constant(strength, drive)
        ada_input_scale = as_constant(ada_input_scale, drive)

        # U_t (and I_t, A_t) before every step t: all that the backward pass needs besides the inputs.
        time_major = (num_steps, *mem.shape)
        mem_sequence = drive.new_empty(time_major)
        syn_sequence = drive.new_empty(time_major) if keep_syn_sequence else None
        ada_sequence = drive.new_empty(time_major) if keep_ada_sequence else None
        not_clamped = drive.new_empty(time_major) if clamp_max is not None else None
        spikes = drive.new_empty(drive.shape)

        initial_last_spikes = last_spikes
        mem_sequence[0].copy_(mem)
        if syn_sequence is not None:
            syn_sequence[0].copy_(syn)
        if ada_sequence is not None:
            ada_sequence[0].copy_(ada)
        current = torch.empty_like(mem)
        scratch = torch.empty_like(mem)
        keep = torch.empty_like(mem)
        step_spikes = torch.empty_like(mem)
        # Work step by step on (batch, *shape) slices, which stay in cache, because whole-sequence
        # temporaries would each cost a fresh allocation. Comparisons write float 0/1 directly, because
        # boolean masks take slower kernels.
        # Sparse steps of a dense recurrence are projected event by event (see recurrence.py).
        project = None if recurrence is None else recurrence.step_projector(weight)
        for t in range(num_steps):
            last = t == num_steps - 1
            # H(U - threshold) and 1 - H(U - threshold), as the surrogate's strict step computes them.
            if recurrence is None:
                torch.gt(mem, threshold, out=spikes[:, t])
            else:
                # The recurrence reads the contiguous step buffer, because it would copy a strided slice
                # of the output first.
                torch.gt(mem, threshold, out=step_spikes)
                spikes[:, t].copy_(step_spikes)
            torch.le(mem, threshold, out=keep)

            # Same elementary operations, in the same order, as the adaptive step function, so the
            # result matches it bit for bit.
            torch.mul(ada, strength, out=scratch)
            torch.sub(syn, scratch, out=current)
            new_mem = torch.mul(mem, decay_mem, out=None if last else mem_sequence[t + 1])
            new_mem.add_(torch.mul(current, one_minus_decay_mem, out=scratch))
            new_mem.mul_(keep)
            if not_clamped is not None:
                torch.le(new_mem, clamp_max, out=not_clamped[t])
                new_mem.clamp_(max=clamp_max)

            syn_out = None if (last or syn_sequence is None) else syn_sequence[t + 1]
            new_syn = torch.mul(syn, decay_syn, out=syn_out)
            new_syn.add_(pending)

            # The trace is charged by the spikes of the previous step. Multiplying by c = 1.0 is exact,
            # so that product is skipped.
            ada_out = None if (last or ada_sequence is None) else ada_sequence[t + 1]
            new_ada = torch.mul(ada, decay_ada, out=ada_out)
            if scale_input:
                new_ada.add_(torch.mul(last_spikes, ada_input_scale, out=scratch))
            else:
                new_ada.add_(last_spikes)
            last_spikes = spikes[:, t]

            if recurrence is None:
                pending = drive[:, t]
            else:
                transmitted = step_spikes if mask is None else step_spikes * mask[:, t]
                pending = drive[:, t] + project(transmitted)
            mem, syn, ada = new_mem, new_syn, new_ada

        if recurrence is None:
            pending = pending.clone()
        last_spikes = last_spikes.clone()

        ctx.save_for_backward(
            mem_sequence, syn_sequence, ada_sequence, not_clamped, weight, mask, spikes, initial_last_spikes
        )
        return spikes, mem, syn, ada, last_spikes, pending

    @staticmethod
    def backward(ctx, grad_spikes, grad_mem, grad_syn, grad_ada, grad_last_spikes, grad_pending):
        options = ctx.options
        recurrence, surrogate = options.recurrence, options.surrogate
        (
            mem_sequence,
            syn_sequence,
            ada_sequence,
            not_clamped,
            weight,
            mask,
            spikes,
            initial_last_spikes,
        ) = ctx.saved_tensors
        num_steps = mem_sequence.shape[0]
        parameters = ctx.parameters
        original_decay_mem, _, _, original_ada_input_scale, original_strength = parameters
        threshold = as_constant(options.threshold, mem_sequence)
        one_minus_decay_mem = as_constant(1.0 - original_decay_mem, mem_sequence)
        # The trace enters the membrane input V_t with the factor -b * (1 - lambda_mem).
        ada_coupling = as_constant(-(original_strength * (1.0 - original_decay_mem)), mem_sequence)
        scale_input = not _is_one(original_ada_input_scale)
        decay_mem, decay_syn, decay_ada, ada_input_scale, strength = (
            as_constant(value, mem_sequence) for value in parameters
        )

        # adjoint_syn[k] contains dL/dI_k for k <= T and dL/dP_T at k = T + 1, so that
        # dL/dX_t = dL/dP_{t+1} = adjoint_syn[t + 2] for every t. adjoint_ada[k] contains dL/dA_k.
        step_shape = mem_sequence.shape[1:]
        adjoint_syn = mem_sequence.new_empty((num_steps + 2, *step_shape))
        adjoint_syn[num_steps].copy_(grad_syn)
        adjoint_syn[num_steps + 1].copy_(grad_pending)
        adjoint_ada = mem_sequence.new_empty((num_steps + 1, *step_shape))
        adjoint_ada[num_steps].copy_(grad_ada)
        adjoint_mem = grad_mem
        parameter_sums = _ParameterGradientSums(parameters, step_shape[1:], mem_sequence)
        chunk_steps = max(1, min(num_steps, _CHUNK_ELEMENTS // mem_sequence[0].numel()))
        keep_buffer = mem_sequence.new_empty((chunk_steps, *step_shape))
        # g_t of the steps in the current chunk, kept until the chunk's parameter gradients are summed.
        grad_v_buffer = mem_sequence.new_empty((chunk_steps, *step_shape))

        for t in reversed(range(num_steps)):
            if t == num_steps - 1 or (t + 1) % chunk_steps == 0:
                # Everything that does not depend on the adjoint state is computed for a chunk of
                # steps at once: fewer, larger ops, on blocks small enough to stay in cache.
                start = (t // chunk_steps) * chunk_steps
                chunk = slice(start, t + 1)
                pseudo_derivative = surrogate.grad(torch.sub(mem_sequence[chunk], threshold))
                direct = grad_spikes[:, chunk].transpose(0, 1) * pseudo_derivative
                # The spike of step t reaches the trace as L_{t+1}, which enters A_{t+2} times c.
                trace_factor = pseudo_derivative * ada_input_scale if scale_input else pseudo_derivative
                keep = torch.le(mem_sequence[chunk], threshold, out=keep_buffer[: t + 1 - start])
                if not_clamped is not None:
                    keep.mul_(not_clamped[chunk])
                if options.diff_reset:
                    reset_factor = _reset_factor(
                        mem_sequence[chunk],
                        syn_sequence[chunk],
                        ada_sequence[chunk],
                        None if not_clamped is None else not_clamped[chunk],
                        pseudo_derivative,
                        decay_mem,
                        one_minus_decay_mem,
                        strength,
                    )
            index = t - start

            # Gradient w.r.t. the membrane input V_t: blocked where the neuron reset or was clamped.
            grad_v = torch.mul(adjoint_mem, keep[index], out=grad_v_buffer[index])

            new_adjoint_mem = torch.addcmul(direct[index], grad_v, decay_mem)
            if t == num_steps - 1:
                new_adjoint_mem.addcmul_(grad_last_spikes, pseudo_derivative[index])
            else:
                new_adjoint_mem.addcmul_(adjoint_ada[t + 2], trace_factor[index])
            if recurrence is not None:
                spike_grad = recurrence.transpose(weight, adjoint_syn[t + 2])
                if mask is not None:
                    spike_grad.mul_(mask[:, t])
                new_adjoint_mem.addcmul_(spike_grad, pseudo_derivative[index])
            if options.diff_reset:
                new_adjoint_mem.addcmul_(adjoint_mem, reset_factor[index])

            syn_slot = adjoint_syn[t]
            torch.mul(adjoint_syn[t + 1], decay_syn, out=syn_slot)
            syn_slot.addcmul_(grad_v, one_minus_decay_mem)
            ada_slot = adjoint_ada[t]
            torch.mul(adjoint_ada[t + 1], decay_ada, out=ada_slot)
            ada_slot.addcmul_(grad_v, ada_coupling)
            adjoint_mem = new_adjoint_mem

            if t == start:
                next_steps = slice(start + 1, chunk.stop + 1)
                parameter_sums.add_chunk(
                    chunk,
                    grad_v_buffer[: chunk.stop - start],
                    mem_sequence,
                    syn_sequence,
                    ada_sequence,
                    adjoint_syn[next_steps],
                    adjoint_ada[next_steps],
                    spikes,
                    initial_last_spikes,
                )

        grad_initial_last_spikes = adjoint_ada[1] * ada_input_scale if scale_input else adjoint_ada[1]
        grad_drive = adjoint_syn[2:].transpose(0, 1)
        grad_weight = None
        if recurrence is not None and weight.requires_grad:
            transmitted = spikes if mask is None else spikes * mask
            grad_weight = recurrence.weight_gradient(
                weight, transmitted.flatten(0, 1), grad_drive.flatten(0, 1)
            )

        return (
            grad_drive,
            adjoint_mem,
            adjoint_syn[0],
            adjoint_ada[0],
            grad_initial_last_spikes,
            adjoint_syn[1],
            *parameter_sums.gradients(),
            grad_weight,
            None,
            None,
        )


def _reset_factor(mem, syn, ada, not_clamped, pseudo_derivative, decay_mem, one_minus_decay_mem, strength):
    """Return ``-surrogate' * [not clamped] * V`` for a chunk of steps (time-major).

    Multiplied by ``dL/dU_{t+1}``, it is what a differentiable reset adds to ``dL/dU_t``.
    """
    membrane_input = mem * decay_mem
    membrane_input.add_((syn - strength * ada) * one_minus_decay_mem)
    factor = membrane_input.mul_(pseudo_derivative).neg_()
    if not_clamped is not None:
        factor.mul_(not_clamped)
    return factor


class _ParameterGradientSums:
    """Gradients of the five parameters, summed over batch and time one chunk of steps at a time.

    Summing each chunk while it is still in cache avoids whole-sequence temporaries. Only parameters
    that require a gradient are summed, and the others get None.
    """

    def __init__(self, parameters: tuple, neuron_shape: torch.Size, like: Tensor) -> None:
        self.parameters = parameters
        self.sums = [like.new_zeros(neuron_shape) if needs_grad(value) else None for value in parameters]

    def add_chunk(
        self,
        chunk: slice,
        grad_membrane_input: Tensor,
        mem_sequence: Tensor,
        syn_sequence: Optional[Tensor],
        ada_sequence: Optional[Tensor],
        adjoint_syn_next: Tensor,
        adjoint_ada_next: Tensor,
        spikes: Tensor,
        initial_last_spikes: Tensor,
    ) -> None:
        """Add the steps ``chunk`` (time-major).

        ``grad_membrane_input`` contains ``g_t``, and ``adjoint_syn_next`` and ``adjoint_ada_next``
        contain ``dL/dI_{t+1}`` and ``dL/dA_{t+1}``, for the steps of the chunk.
        """
        decay_mem_sum, decay_syn_sum, decay_ada_sum, input_scale_sum, strength_sum = self.sums
        strength = self.parameters[4]
        if decay_mem_sum is not None:
            # dV_t / dlambda_mem = U_t - (I_t - b * A_t).
            synaptic_input = syn_sequence[chunk] - strength * ada_sequence[chunk]
            decay_mem_sum.add_(_sum_steps(grad_membrane_input * (mem_sequence[chunk] - synaptic_input)))
        if strength_sum is not None:
            # The factor -(1 - lambda_mem) is applied once, in gradients().
            strength_sum.add_(_sum_steps(grad_membrane_input * ada_sequence[chunk]))
        if decay_syn_sum is not None:
            decay_syn_sum.add_(_sum_steps(adjoint_syn_next * syn_sequence[chunk]))
        if decay_ada_sum is not None:
            decay_ada_sum.add_(_sum_steps(adjoint_ada_next * ada_sequence[chunk]))
        if input_scale_sum is not None:
            # L_0 is the carried-in spikes, and L_t = S_{t-1} after that.
            first = max(chunk.start, 1)
            previous_spikes = spikes[:, first - 1 : chunk.stop - 1].transpose(0, 1)
            input_scale_sum.add_(_sum_steps(adjoint_ada_next[first - chunk.start :] * previous_spikes))
            if chunk.start == 0:
                input_scale_sum.add_((adjoint_ada_next[0] * initial_last_spikes).sum(0))

    def gradients(self) -> list[Optional[Tensor]]:
        """Return the five gradients, each summed to the shape of its parameter."""
        decay_mem, strength = self.parameters[0], self.parameters[4]
        if self.sums[4] is not None:
            self.sums[4].mul_(-(1.0 - decay_mem))
        return [
            None if total is None else total.sum_to_size(value.shape)
            for total, value in zip(self.sums, self.parameters)
        ]


def _sum_steps(per_element: Tensor) -> Tensor:
    """Sum a time-major ``(time, batch, *shape)`` block over time and batch."""
    return per_element.sum(dim=(0, 1))


def _check_parameter(name: str, value: FloatOrTensor, neuron_shape: torch.Size) -> None:
    if not isinstance(value, Tensor):
        if not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a float or a tensor, got {type(value).__name__}.")
        return
    try:
        broadcast = torch.broadcast_shapes(value.shape, neuron_shape)
    except RuntimeError:
        broadcast = None
    if broadcast != neuron_shape:
        raise ValueError(
            f"{name} has shape {tuple(value.shape)}, which does not broadcast to the neuron shape "
            f"{tuple(neuron_shape)}. Give a float, one value per neuron, or a shape that broadcasts to it."
        )


def adaptive_lif_sequence(
    drive: Tensor,
    mem: Tensor,
    syn: Tensor,
    ada: Tensor,
    last_spikes: Tensor,
    pending: Tensor,
    decay_mem: FloatOrTensor,
    decay_syn: FloatOrTensor,
    decay_ada: FloatOrTensor,
    ada_input_scale: FloatOrTensor,
    strength: FloatOrTensor,
    *,
    threshold: float,
    surrogate: SurrogateSpike,
    diff_reset: bool = False,
    clamp_max: Optional[float] = None,
    recurrence: Optional[LinearRecurrence] = None,
    recurrent_weight: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
) -> AdaptiveLIFSequenceOutput:
    """Run adaptive LIF neurons over a whole drive sequence with a hand-written backward pass.

    Each of the five parameters is a float or a tensor broadcastable to ``shape``; a tensor that
    requires a gradient receives one.

    Args:
        drive: Feed-forward drive ``X`` of shape ``(batch, time, *shape)``; ``X_t`` arrives at step
            ``t + 1``.
        mem: Membrane potential before the first step, ``(batch, *shape)``.
        syn: Synaptic current before the first step.
        ada: Adaptation trace before the first step.
        last_spikes: Spikes of the step before the first, which charge the trace at the first step.
        pending: Drive that arrives at the first step.
        decay_mem: Per-step membrane decay ``exp(-dt / tau_mem)``.
        decay_syn: Per-step synaptic decay ``exp(-dt / tau_syn)``.
        decay_ada: Per-step adaptation decay ``exp(-dt / tau_ada)``.
        ada_input_scale: Factor ``c`` that multiplies a spike entering the trace.
        strength: Adaptation strength ``b``: the trace lowers the synaptic current by ``b * A``.
        threshold: Firing threshold.
        surrogate: Heaviside spike function whose ``grad(x)`` is the surrogate derivative (see
            :func:`~lightning_snn.kernels.lif.supports_surrogate`).
        diff_reset: Backpropagate through the reset term.
        clamp_max: Clip the membrane from above at this value after each update; None for no clip.
        recurrence: Recurrent connection of the population, fed with the transmitted spikes.
        recurrent_weight: Weight of ``recurrence``.
        mask: Dropout mask of the transmitted spikes, ``(batch, time, *shape)``. It scales only what
            the recurrence receives, not the returned spikes and not the adaptation trace.

    Returns:
        The spike sequence and the final membrane, current, trace, last spikes and pending drive.

    Raises:
        ValueError: When a shape, dtype or device does not fit ``drive``, when only one of
            ``recurrence`` and ``recurrent_weight`` is given, or when ``surrogate`` does not fire with
            the Heaviside step.
        TypeError: When a parameter is neither a float nor a tensor.
    """
    if drive.dim() < 3 or drive.shape[1] < 1:
        raise ValueError(f"drive must be (batch, time >= 1, *shape), got shape {tuple(drive.shape)}.")
    if not drive.is_floating_point():
        raise ValueError(f"drive must be a floating-point tensor, got dtype {drive.dtype}.")
    state_shape = torch.Size((drive.shape[0], *drive.shape[2:]))
    states = {"mem": mem, "syn": syn, "ada": ada, "last_spikes": last_spikes, "pending": pending}
    for name, state in states.items():
        if state.shape != state_shape:
            raise ValueError(
                f"{name} has shape {tuple(state.shape)}, expected (batch, *shape) = {tuple(state_shape)} "
                f"to match drive of shape {tuple(drive.shape)}."
            )
        if state.dtype != drive.dtype or state.device != drive.device:
            raise ValueError(
                f"{name} is {state.dtype} on {state.device} but drive is {drive.dtype} on {drive.device}. "
                "Convert the states to the drive's dtype and device."
            )
    if mask is not None and mask.shape != drive.shape:
        raise ValueError(f"mask has shape {tuple(mask.shape)}, expected the drive's shape {tuple(drive.shape)}.")
    parameters = {
        "decay_mem": decay_mem,
        "decay_syn": decay_syn,
        "decay_ada": decay_ada,
        "ada_input_scale": ada_input_scale,
        "strength": strength,
    }
    for name, value in parameters.items():
        _check_parameter(name, value, state_shape[1:])
    if (recurrence is None) != (recurrent_weight is None):
        raise ValueError("Give recurrence and recurrent_weight together, or neither.")
    if not supports_surrogate(surrogate):
        raise ValueError(
            f"The surrogate {type(surrogate).__name__} does not fire with the Heaviside step. "
            "Run such populations through the plain step loop."
        )

    options = _AdaptiveOptions(float(threshold), surrogate, bool(diff_reset), clamp_max, recurrence)
    outputs = _AdaptiveLIFSequence.apply(
        drive,
        mem,
        syn,
        ada,
        last_spikes,
        pending,
        decay_mem,
        decay_syn,
        decay_ada,
        ada_input_scale,
        strength,
        recurrent_weight,
        mask,
        options,
    )
    return AdaptiveLIFSequenceOutput(*outputs)
