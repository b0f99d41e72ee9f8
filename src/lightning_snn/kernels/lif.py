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
The one exception is a recurrence fed with sparse spikes, which sums the recurrent drive event by
event (see :mod:`.recurrence`) in another order than a matmul or a convolution. Gradients equal autograd's up to
float rounding.

On the CPU the elementwise work runs in the compiled kernels of :mod:`.cpu_extension`: the whole
forward pass in one call, recurrence included, and the backward pass in one call for the SuperSpike
surrogates. Other surrogates and a differentiable reset loop over time in Python with one fused call
per step. Without the compiled kernels the same steps run as torch ops.
"""

from typing import NamedTuple, Optional, Union

import torch
from torch import Tensor

from lightning_snn.kernels import cpu_extension
from lightning_snn.kernels._reduce import as_constant, decay_gradient, needs_grad
from lightning_snn.kernels.recurrence import LinearRecurrence
from lightning_snn.surrogate import SuperSpike, SuperSpikeAsymptote, SuperSpikeRescaled, SurrogateSpike

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


def _per_neuron(decay: Tensor, shape: torch.Size) -> Tensor:
    """Return a decay tensor as one contiguous value per neuron, as the C++ steps read it."""
    return torch.broadcast_to(decay.detach(), shape).contiguous()


def _superspike_scale(surrogate: SurrogateSpike) -> Optional[float]:
    """Return ``c`` when the surrogate derivative is ``c / (beta * |x| + 1)^2``, else None."""
    kind = type(surrogate)
    if kind is SuperSpike:
        return 1.0
    if kind is SuperSpikeRescaled:
        return (surrogate.beta + 1.0) ** 2
    if kind is SuperSpikeAsymptote:
        return surrogate.beta
    return None


def _forward_step_function(options, threshold, clamp_max, decay_mem, one_minus_decay_mem, decay_syn, like):
    """Return ``step(mem, syn, pending, spikes, new_mem, new_syn, not_clamped)`` for one time step.

    It writes ``S_t`` into ``spikes``, ``U_{t+1}`` into ``new_mem``, ``I_{t+1}`` into ``new_syn`` and,
    with a clip, whether ``U_{t+1}`` stayed below it into ``not_clamped``. The fused C++ step runs when
    it is compiled, and the torch ops run otherwise. Both apply the float operations of ``LIF.step`` in
    its order, so both match it bit for bit.
    """
    steps = cpu_extension.available_for(like)
    if steps is not None:
        shape = like.shape[1:]
        lambda_mem, leak = _per_neuron(decay_mem, shape), _per_neuron(one_minus_decay_mem, shape)
        lambda_syn = _per_neuron(decay_syn, shape)

        def fused_step(mem, syn, pending, spikes, new_mem, new_syn, not_clamped):
            steps.forward_step(
                mem, syn, pending, lambda_mem, leak, lambda_syn, options.threshold, options.clamp_max,
                spikes, new_mem, new_syn, not_clamped,
            )

        return fused_step

    scratch = torch.empty_like(like)
    keep = torch.empty_like(like)

    def torch_step(mem, syn, pending, spikes, new_mem, new_syn, not_clamped):
        # H(U - threshold) and 1 - H(U - threshold), as the surrogate's strict step computes them.
        # Comparisons write float 0/1 directly, because boolean masks take slower kernels.
        torch.gt(mem, threshold, out=spikes)
        torch.le(mem, threshold, out=keep)

        torch.mul(mem, decay_mem, out=new_mem)
        new_mem.add_(torch.mul(syn, one_minus_decay_mem, out=scratch))
        new_mem.mul_(keep)
        if not_clamped is not None:
            torch.le(new_mem, clamp_max, out=not_clamped)
            new_mem.clamp_(max=clamp_max)

        torch.mul(syn, decay_syn, out=new_syn)
        new_syn.add_(pending)

    return torch_step


def _backward_step_function(decay_mem, one_minus_decay_mem, decay_syn, like):
    """Return ``step(adjoint_mem, keep, direct, spike_grad, pseudo_derivative, adjoint_syn_next,
    new_adjoint_mem, adjoint_syn, grad_membrane_input)`` for one step of the adjoint recurrence.

    It writes ``dL/dU_t`` into ``new_adjoint_mem``, ``dL/dI_t`` into ``adjoint_syn`` and, when given,
    the gradient w.r.t. the membrane input into ``grad_membrane_input``.
    """
    steps = cpu_extension.available_for(like)
    if steps is not None:
        shape = like.shape[1:]
        lambda_mem, leak = _per_neuron(decay_mem, shape), _per_neuron(one_minus_decay_mem, shape)
        lambda_syn = _per_neuron(decay_syn, shape)

        def fused_step(adjoint_mem, keep, direct, spike_grad, pseudo_derivative, adjoint_syn_next,
                       new_adjoint_mem, adjoint_syn, grad_membrane_input):
            steps.backward_step(
                adjoint_mem, keep, direct, spike_grad, pseudo_derivative, adjoint_syn_next,
                lambda_mem, leak, lambda_syn, new_adjoint_mem, adjoint_syn, grad_membrane_input,
            )

        return fused_step

    grad_v = torch.empty_like(like)

    def torch_step(adjoint_mem, keep, direct, spike_grad, pseudo_derivative, adjoint_syn_next,
                   new_adjoint_mem, adjoint_syn, grad_membrane_input):
        torch.mul(adjoint_mem, keep, out=grad_v)
        if grad_membrane_input is not None:
            grad_membrane_input.copy_(grad_v)
        # new_adjoint_mem may be adjoint_mem itself, which grad_v no longer needs.
        torch.addcmul(direct, grad_v, decay_mem, out=new_adjoint_mem)
        if spike_grad is not None:
            new_adjoint_mem.addcmul_(spike_grad, pseudo_derivative)
        torch.mul(adjoint_syn_next, decay_syn, out=adjoint_syn)
        adjoint_syn.addcmul_(grad_v, one_minus_decay_mem)

    return torch_step


def _forward_loop(
    drive, mem, syn, pending, options, threshold, clamp_max, decay_mem, one_minus_decay_mem, decay_syn,
    mem_sequence, syn_sequence, not_clamped, spikes, weight, mask,
):
    """Run the forward steps one by one, with the recurrence between them; return the final states."""
    recurrence = options.recurrence
    num_steps = drive.shape[1]
    forward_step = _forward_step_function(options, threshold, clamp_max, decay_mem, one_minus_decay_mem, decay_syn, mem)
    project = None if recurrence is None else recurrence.step_projector(weight)
    step_spikes = torch.empty_like(mem)
    final_mem = torch.empty_like(mem)
    # The current is updated in place here whenever its sequence is not kept; the input stays intact.
    syn_work = torch.empty_like(syn)

    # Work step by step on (batch, *shape) slices, which stay in cache, because whole-sequence
    # temporaries would each cost a fresh allocation.
    for t in range(num_steps):
        last = t == num_steps - 1
        # The recurrence reads a contiguous copy of the spikes, so the strided output slice is
        # not copied again.
        spikes_out = spikes[:, t] if recurrence is None else step_spikes
        new_mem = final_mem if last else mem_sequence[t + 1]
        new_syn = syn_work if (last or syn_sequence is None) else syn_sequence[t + 1]
        forward_step(mem, syn, pending, spikes_out, new_mem, new_syn, None if not_clamped is None else not_clamped[t])

        if recurrence is None:
            pending = drive[:, t]
        else:
            spikes[:, t].copy_(step_spikes)
            transmitted = step_spikes if mask is None else step_spikes * mask[:, t]
            pending = drive[:, t] + project(transmitted)
        mem, syn = new_mem, new_syn
    return mem, syn, pending


class _CurrentAdjointSlots:
    """Slots ``0 .. T + 1`` of the current's adjoint, laid out so that the drive gradient is batch-major.

    Slot ``s >= 2`` is ``grad_drive[:, s - 2]`` (``dL/dX_{s-2} = dL/dI_s``). Slots 0 and 1 are
    ``edge[0]`` (``dL/dI_0``) and ``edge[1]`` (``dL/dP_0``).
    """

    def __init__(self, grad_drive: Tensor, edge: Tensor) -> None:
        self.grad_drive, self.edge = grad_drive, edge

    def __getitem__(self, slot: int) -> Tensor:
        return self.grad_drive[:, slot - 2] if slot >= 2 else self.edge[slot]

    def time_major(self, start: int, stop: int) -> Tensor:
        """Return slots ``start .. stop - 1`` stacked along a leading time axis."""
        return torch.stack([self[slot] for slot in range(start, stop)])


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

        # The fused steps read rows of contiguous memory; copies are made only where needed.
        drive, pending = drive.contiguous(), pending.contiguous()
        mem_sequence[0].copy_(mem)
        mem = mem_sequence[0]
        if syn_sequence is not None:
            syn_sequence[0].copy_(syn)
            syn = syn_sequence[0]
        else:
            syn = syn.contiguous()
        steps = cpu_extension.available_for(drive)
        if steps is not None and recurrence is not None:
            # The whole loop, recurrence included, runs in C++. Sparse steps are projected by events.
            final_mem = torch.empty_like(mem)
            final_syn = syn.clone()
            pending_work = pending.clone()
            event_density = recurrence.step_event_density(weight)
            steps.forward_sequence_recurrent(
                drive, pending_work, _per_neuron(decay_mem, mem.shape[1:]),
                _per_neuron(one_minus_decay_mem, mem.shape[1:]), _per_neuron(decay_syn, mem.shape[1:]),
                options.threshold, options.clamp_max, spikes, mem_sequence, syn_sequence, not_clamped,
                final_mem, final_syn, recurrence.forward_weight(weight),
                None if mask is None else mask.contiguous(), event_density, list(recurrence.padding),
            )
            mem, syn, pending = final_mem, final_syn, pending_work
        elif steps is not None and recurrence is None:
            # Without a recurrence the neurons need nothing between steps: one call runs them all.
            final_mem = torch.empty_like(mem)
            final_syn = syn.clone()
            steps.forward_sequence(
                drive, pending, _per_neuron(decay_mem, mem.shape[1:]),
                _per_neuron(one_minus_decay_mem, mem.shape[1:]), _per_neuron(decay_syn, mem.shape[1:]),
                options.threshold, options.clamp_max, spikes, mem_sequence, syn_sequence, not_clamped,
                final_mem, final_syn,
            )
            mem, syn, pending = final_mem, final_syn, drive[:, -1]
        else:
            mem, syn, pending = _forward_loop(
                drive, mem, syn, pending, options, threshold, clamp_max, decay_mem, one_minus_decay_mem,
                decay_syn, mem_sequence, syn_sequence, not_clamped, spikes, weight, mask,
            )

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

        # dL/dU_t is updated in place, from a copy of the incoming gradient.
        adjoint_mem = torch.empty_like(mem_sequence[0])
        adjoint_mem.copy_(grad_mem)
        grad_membrane_input = None
        if needs_grad(original_decay_mem):
            grad_membrane_input = torch.empty_like(mem_sequence)
        steps = cpu_extension.available_for(adjoint_mem)
        superspike_scale = _superspike_scale(surrogate)
        if (
            steps is not None
            and not options.diff_reset
            and superspike_scale is not None
            and grad_spikes.is_contiguous()
        ):
            # One C++ pass over the sequence computes the surrogate derivative and the adjoint, and
            # writes the drive gradient batch-major, as the connection before reshapes it.
            shape = adjoint_mem.shape[1:]
            grad_drive = torch.empty_like(grad_spikes)
            edge = mem_sequence.new_empty((2, *mem_sequence.shape[1:]))
            slots = _CurrentAdjointSlots(grad_drive, edge)
            slots[num_steps].copy_(grad_syn)
            slots[num_steps + 1].copy_(grad_pending)
            steps.backward_sequence_superspike(
                adjoint_mem, mem_sequence, grad_spikes, not_clamped, grad_drive, edge,
                _per_neuron(decay_mem, shape), _per_neuron(one_minus_decay_mem, shape),
                _per_neuron(decay_syn, shape), options.threshold, surrogate.beta, superspike_scale,
                grad_membrane_input, None if recurrence is None else weight.detach().contiguous(),
                None if mask is None else mask.contiguous(), [] if recurrence is None else list(recurrence.padding),
            )
            grad_weight = None
            if recurrence is not None and weight.requires_grad:
                transmitted = spikes if mask is None else spikes * mask
                grad_weight = recurrence.weight_gradient(weight, transmitted.flatten(0, 1), grad_drive.flatten(0, 1))
            grad_decay_mem = grad_decay_syn = None
            if grad_membrane_input is not None:
                grad_decay_mem = decay_gradient(original_decay_mem, grad_membrane_input * (mem_sequence - syn_sequence))
            if needs_grad(original_decay_syn):
                grad_decay_syn = decay_gradient(original_decay_syn, slots.time_major(1, num_steps + 1) * syn_sequence)
            return grad_drive, adjoint_mem, edge[0], edge[1], grad_decay_mem, grad_decay_syn, grad_weight, None, None

        # adjoint_syn[k] contains dL/dI_k for k <= T and dL/dP_T at k = T + 1, so that
        # dL/dX_t = dL/dP_{t+1} = adjoint_syn[t + 2] for every t.
        adjoint_syn = mem_sequence.new_empty((num_steps + 2, *mem_sequence.shape[1:]))
        adjoint_syn[num_steps].copy_(grad_syn)
        adjoint_syn[num_steps + 1].copy_(grad_pending)

        backward_step = _backward_step_function(decay_mem, one_minus_decay_mem, decay_syn, adjoint_mem)
        chunk_steps_fn = None
        if steps is not None and recurrence is None and not options.diff_reset:
            chunk_steps_fn = steps.backward_steps
            shape = adjoint_mem.shape[1:]
            lambdas = [_per_neuron(value, shape) for value in (decay_mem, one_minus_decay_mem, decay_syn)]
        chunk_steps = max(1, min(num_steps, _CHUNK_ELEMENTS // mem_sequence[0].numel()))
        keep_buffer = mem_sequence.new_empty((chunk_steps, *mem_sequence.shape[1:]))
        direct_buffer = torch.empty_like(keep_buffer)

        for t in reversed(range(num_steps)):
            if t == num_steps - 1 or (t + 1) % chunk_steps == 0:
                # Everything that does not depend on the adjoint state is computed for a chunk of
                # steps at once: fewer, larger ops, on blocks small enough to stay in cache.
                start = (t // chunk_steps) * chunk_steps
                chunk = slice(start, t + 1)
                t_end = t
                pseudo_derivative = surrogate.grad(torch.sub(mem_sequence[chunk], threshold))
                direct = torch.mul(
                    grad_spikes[:, chunk].transpose(0, 1), pseudo_derivative, out=direct_buffer[: t + 1 - start]
                )
                keep = torch.le(mem_sequence[chunk], threshold, out=keep_buffer[: t + 1 - start])
                if not_clamped is not None:
                    keep.mul_(not_clamped[chunk])
            index = t - start
            if chunk_steps_fn is not None:
                # Without recurrence or reset gradient nothing enters between steps: one call runs
                # the whole chunk, from its last step back to its first.
                if index == 0:
                    chunk_steps_fn(
                        adjoint_mem, keep, direct, adjoint_syn[start : t_end + 2], lambdas[0], lambdas[1],
                        lambdas[2], None if grad_membrane_input is None else grad_membrane_input[chunk],
                    )
                continue

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

            backward_step(
                adjoint_mem,
                keep[index],
                direct[index],
                spike_grad,
                None if spike_grad is None else pseudo_derivative[index],
                adjoint_syn[t + 1],
                adjoint_mem,
                adjoint_syn[t],
                None if grad_membrane_input is None else grad_membrane_input[t],
            )

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
