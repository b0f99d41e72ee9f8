"""Triton kernels for a feed-forward LIF population: the whole time loop in one launch.

:func:`lif_sequence_triton` computes the same recurrence as :func:`lightning_snn.kernels.lif.lif_sequence`
for a population without recurrent connections, with ``U_t``, ``I_t`` the state before step ``t`` and
``P_t`` the drive pending at step ``t``::

    S_t     = H(U_t - threshold)
    I_{t+1} = lambda_syn * I_t + P_t
    U_{t+1} = clamp((lambda_mem * U_t + (1 - lambda_mem) * I_t) * (1 - S_t))
    P_{t+1} = X_t

The torch loop of ``lif_sequence`` launches about ten small GPU kernels per time step, so short steps
on small populations are bound by launch overhead. Without recurrence every neuron evolves on its own.
So here each Triton program owns a block of neurons (flattened over batch and neuron shape), keeps their
state in registers and loops over all time steps. That makes one launch for the forward pass and one
for the backward pass, whatever the number of steps.

The forward kernel applies the same elementary float operations in the same order as ``lif_sequence``
and is compiled without fused multiply-add, so spikes and states equal the torch kernel bit for bit.
For the backward pass it saves the membrane sequence ``U`` (time-major, ``(time, batch, *shape)``), the
current sequence ``I`` only when a decay needs a gradient or the reset is differentiable, and a
not-clamped mask only when ``clamp_max`` is set. The backward pass first evaluates the surrogate
derivative ``surrogate.grad(U - threshold)`` for the whole sequence with torch, so every Heaviside
surrogate works unchanged. A second kernel then runs the adjoint recurrence of ``lif_sequence``
backwards in time (its module docstring gives the equations, here without the recurrence terms).
That kernel also accumulates, per neuron and batch entry, the time sums from which torch reduces the
decay gradients.

Importing this module works without Triton; :func:`triton_available` then returns False.
"""

import math
import os
from typing import NamedTuple, Optional, Tuple, Union

import torch
from torch import Tensor

from lightning_snn.kernels._reduce import decay_gradient, needs_grad
from lightning_snn.kernels.lif import LIFSequenceOutput, supports_surrogate
from lightning_snn.surrogate import SurrogateSpike

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = None

Decay = Union[float, Tensor]

# Triton reads TRITON_INTERPRET when @triton.jit decorates a function, so the kernels below are
# interpreted (and accept CPU tensors) only when the variable was set before this module was imported.
_INTERPRETED_AT_IMPORT = os.environ.get("TRITON_INTERPRET") == "1"
# NOTE: bfloat16 is left out because Triton's interpreter (3.9) stores it as uint16 and its results
# differed from the torch kernel, so bit equality could not be checked for bfloat16.
_SUPPORTED_DTYPES = (torch.float16, torch.float32, torch.float64)
# Neurons per program. Each program walks through all time steps one after another, so small blocks
# give more programs to run side by side. 128 gives each thread of the default 4 warps one neuron.
# NOTE: chosen by reasoning, not tuned by measurement on a GPU.
DEFAULT_BLOCK_SIZE = 128


def triton_available(tensor: Tensor) -> bool:
    """Return True when :func:`lif_sequence_triton` can run on ``tensor``'s device.

    That is the case when Triton imports and either ``tensor`` is on a CUDA device, or it is on the
    CPU and ``TRITON_INTERPRET=1`` was set both now and before this module was imported.
    """
    if triton is None:
        return False
    if tensor.is_cuda:
        return True
    interpreted_now = os.environ.get("TRITON_INTERPRET") == "1"
    return tensor.device.type == "cpu" and interpreted_now and _INTERPRETED_AT_IMPORT


class _TritonLIFOptions(NamedTuple):
    threshold: float
    surrogate: SurrogateSpike
    diff_reset: bool
    clamp_max: Optional[float]
    block_size: int


if triton is not None:

    @triton.jit
    def _lif_forward_kernel(
        drive_ptr,
        mem_ptr,
        syn_ptr,
        pending_ptr,
        decay_mem_ptr,
        one_minus_decay_mem_ptr,
        decay_syn_ptr,
        constants_ptr,
        spikes_ptr,
        mem_sequence_ptr,
        syn_sequence_ptr,
        not_clamped_ptr,
        mem_out_ptr,
        syn_out_ptr,
        num_elements,
        num_neurons,
        num_steps,
        SAVE_SYN: tl.constexpr,
        CLAMP: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        # Element e = b * num_neurons + n of the flattened (batch, neurons) state. Offsets are int64,
        # so that indices into the (batch, time, neurons) sequences cannot overflow.
        num_elements = tl.cast(num_elements, tl.int64)
        num_neurons = tl.cast(num_neurons, tl.int64)
        offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        valid = offsets < num_elements
        neuron = offsets % num_neurons
        batch_major = (offsets // num_neurons) * num_steps * num_neurons + neuron

        threshold = tl.load(constants_ptr)
        clamp_max = tl.load(constants_ptr + 1)
        decay_mem = tl.load(decay_mem_ptr + neuron, mask=valid, other=0.0)
        one_minus_decay_mem = tl.load(one_minus_decay_mem_ptr + neuron, mask=valid, other=0.0)
        decay_syn = tl.load(decay_syn_ptr + neuron, mask=valid, other=0.0)
        mem = tl.load(mem_ptr + offsets, mask=valid, other=0.0)
        syn = tl.load(syn_ptr + offsets, mask=valid, other=0.0)
        pending = tl.load(pending_ptr + offsets, mask=valid, other=0.0)

        for t in range(num_steps):
            time_major = t * num_elements + offsets
            tl.store(mem_sequence_ptr + time_major, mem, mask=valid)
            if SAVE_SYN:
                tl.store(syn_sequence_ptr + time_major, syn, mask=valid)

            # H(U - threshold) and 1 - H(U - threshold) as 0/1 floats, as the torch kernel computes them.
            spikes = (mem > threshold).to(mem.dtype)
            keep = (mem <= threshold).to(mem.dtype)
            tl.store(spikes_ptr + batch_major + t * num_neurons, spikes, mask=valid)

            # One rounding per statement, in the order of the torch kernel, so the results match bit
            # for bit (the launch disables fused multiply-add).
            new_mem = mem * decay_mem
            new_mem = new_mem + syn * one_minus_decay_mem
            new_mem = new_mem * keep
            if CLAMP:
                tl.store(not_clamped_ptr + time_major, new_mem <= clamp_max, mask=valid)
                # Written as a select on ">" so that NaN passes through, as in torch.clamp.
                new_mem = tl.where(new_mem > clamp_max, clamp_max, new_mem)

            new_syn = syn * decay_syn
            new_syn = new_syn + pending
            pending = tl.load(drive_ptr + batch_major + t * num_neurons, mask=valid, other=0.0)
            mem = new_mem
            syn = new_syn

        tl.store(mem_out_ptr + offsets, mem, mask=valid)
        tl.store(syn_out_ptr + offsets, syn, mask=valid)

    @triton.jit
    def _lif_backward_kernel(
        grad_spikes_ptr,
        pseudo_derivative_ptr,
        mem_sequence_ptr,
        syn_sequence_ptr,
        not_clamped_ptr,
        decay_mem_ptr,
        one_minus_decay_mem_ptr,
        decay_syn_ptr,
        constants_ptr,
        grad_mem_ptr,
        grad_syn_ptr,
        grad_pending_ptr,
        grad_drive_ptr,
        grad_mem_in_ptr,
        grad_syn_in_ptr,
        grad_pending_in_ptr,
        decay_mem_terms_ptr,
        decay_syn_terms_ptr,
        num_elements,
        num_neurons,
        num_steps,
        SAVE_SYN: tl.constexpr,
        CLAMP: tl.constexpr,
        DIFF_RESET: tl.constexpr,
        GRAD_DECAY_MEM: tl.constexpr,
        GRAD_DECAY_SYN: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        num_elements = tl.cast(num_elements, tl.int64)
        num_neurons = tl.cast(num_neurons, tl.int64)
        offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        valid = offsets < num_elements
        neuron = offsets % num_neurons
        batch_major = (offsets // num_neurons) * num_steps * num_neurons + neuron

        threshold = tl.load(constants_ptr)
        decay_mem = tl.load(decay_mem_ptr + neuron, mask=valid, other=0.0)
        one_minus_decay_mem = tl.load(one_minus_decay_mem_ptr + neuron, mask=valid, other=0.0)
        decay_syn = tl.load(decay_syn_ptr + neuron, mask=valid, other=0.0)

        # Adjoint state entering step t (counted down from the last step): dL/dU_{t+1},
        # dL/dI_{t+1} and dL/dP_{t+1}, which is also dL/dX_t.
        adjoint_mem = tl.load(grad_mem_ptr + offsets, mask=valid, other=0.0)
        adjoint_syn = tl.load(grad_syn_ptr + offsets, mask=valid, other=0.0)
        adjoint_pending = tl.load(grad_pending_ptr + offsets, mask=valid, other=0.0)
        decay_mem_sum = tl.zeros_like(adjoint_mem)
        decay_syn_sum = tl.zeros_like(adjoint_mem)

        for step in range(num_steps):
            t = num_steps - 1 - step
            time_major = t * num_elements + offsets
            tl.store(grad_drive_ptr + batch_major + t * num_neurons, adjoint_pending, mask=valid)

            mem = tl.load(mem_sequence_ptr + time_major, mask=valid, other=0.0)
            pseudo_derivative = tl.load(pseudo_derivative_ptr + time_major, mask=valid, other=0.0)
            grad_spikes = tl.load(grad_spikes_ptr + batch_major + t * num_neurons, mask=valid, other=0.0)
            if SAVE_SYN:
                syn = tl.load(syn_sequence_ptr + time_major, mask=valid, other=0.0)

            # Gradient w.r.t. the membrane input V_t, blocked where the neuron reset or was clamped.
            grad_reset = adjoint_mem
            if CLAMP:
                not_clamped = tl.load(not_clamped_ptr + time_major, mask=valid, other=0).to(mem.dtype)
                grad_reset = adjoint_mem * not_clamped
            grad_v = grad_reset * (mem <= threshold).to(mem.dtype)

            new_adjoint_mem = grad_spikes * pseudo_derivative
            new_adjoint_mem = new_adjoint_mem + grad_v * decay_mem
            if DIFF_RESET:
                # U_{t+1} = V_t * (1 - S_t): the reset passes -V_t * dL/dU_{t+1} on to S_t.
                membrane_input = mem * decay_mem + syn * one_minus_decay_mem
                new_adjoint_mem = new_adjoint_mem - grad_reset * membrane_input * pseudo_derivative

            if GRAD_DECAY_MEM:
                decay_mem_sum += grad_v * (mem - syn)
            if GRAD_DECAY_SYN:
                decay_syn_sum += adjoint_syn * syn

            new_adjoint_syn = adjoint_syn * decay_syn + grad_v * one_minus_decay_mem
            adjoint_pending = adjoint_syn
            adjoint_syn = new_adjoint_syn
            adjoint_mem = new_adjoint_mem

        tl.store(grad_mem_in_ptr + offsets, adjoint_mem, mask=valid)
        tl.store(grad_syn_in_ptr + offsets, adjoint_syn, mask=valid)
        tl.store(grad_pending_in_ptr + offsets, adjoint_pending, mask=valid)
        if GRAD_DECAY_MEM:
            tl.store(decay_mem_terms_ptr + offsets, decay_mem_sum, mask=valid)
        if GRAD_DECAY_SYN:
            tl.store(decay_syn_terms_ptr + offsets, decay_syn_sum, mask=valid)


def _per_neuron(value: Decay, neuron_shape: torch.Size, like: Tensor) -> Tensor:
    """Expand a float or broadcastable tensor to a contiguous vector with one entry per neuron."""
    if isinstance(value, Tensor):
        value = value.detach().to(dtype=like.dtype, device=like.device)
    else:
        # Rounded once to the dtype of ``like``, as the torch kernel rounds its constants.
        value = torch.tensor(value, dtype=like.dtype, device=like.device)
    return value.expand(neuron_shape).contiguous().view(-1)


def _launch_grid(num_elements: int, block_size: int) -> Tuple[int]:
    return (triton.cdiv(num_elements, block_size),)


class _TritonLIFSequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, drive, mem, syn, pending, decay_mem, decay_syn, options):
        batch, num_steps = drive.shape[:2]
        neuron_shape = drive.shape[2:]
        num_neurons = math.prod(neuron_shape)
        num_elements = batch * num_neurons
        save_syn = needs_grad(decay_mem) or needs_grad(decay_syn) or options.diff_reset
        clamp = options.clamp_max is not None

        # The decays as the kernel reads them. 1 - decay_mem is computed before the expansion, in the
        # dtype of the given decay, as the torch kernel computes it.
        decay_mem_vector = _per_neuron(decay_mem, neuron_shape, drive)
        one_minus_decay_mem_vector = _per_neuron(1.0 - decay_mem, neuron_shape, drive)
        decay_syn_vector = _per_neuron(decay_syn, neuron_shape, drive)
        clamp_max = options.clamp_max if clamp else 0.0
        constants = torch.tensor([options.threshold, clamp_max], dtype=drive.dtype, device=drive.device)

        state_shape = (batch, *neuron_shape)
        time_major = (num_steps, *state_shape)
        spikes = drive.new_empty(drive.shape)
        mem_out = drive.new_empty(state_shape)
        syn_out = drive.new_empty(state_shape)
        mem_sequence = drive.new_empty(time_major)
        syn_sequence = drive.new_empty(time_major) if save_syn else None
        not_clamped = torch.empty(time_major, dtype=torch.bool, device=drive.device) if clamp else None

        if num_elements > 0:
            # The kernel never touches a buffer that a constexpr flag switches off, so any tensor fills
            # that slot.
            _lif_forward_kernel[_launch_grid(num_elements, options.block_size)](
                drive.contiguous(),
                mem.contiguous(),
                syn.contiguous(),
                pending.contiguous(),
                decay_mem_vector,
                one_minus_decay_mem_vector,
                decay_syn_vector,
                constants,
                spikes,
                mem_sequence,
                syn_sequence if save_syn else mem_sequence,
                not_clamped if clamp else mem_sequence,
                mem_out,
                syn_out,
                num_elements,
                num_neurons,
                num_steps,
                SAVE_SYN=save_syn,
                CLAMP=clamp,
                BLOCK=options.block_size,
                # Fused multiply-add rounds once where the torch kernel rounds twice.
                # NOTE: the tests check bit equality in the interpreter; on CUDA it rests on this flag.
                enable_fp_fusion=False,
            )
        # The last drive step is the pending drive of the next call. It is copied, because outputs of an
        # autograd function must not alias its inputs.
        pending_out = drive[:, -1].clone(memory_format=torch.contiguous_format)

        ctx.options = options
        ctx.decays = (decay_mem, decay_syn)
        ctx.save_for_backward(
            mem_sequence,
            syn_sequence,
            not_clamped,
            decay_mem_vector,
            one_minus_decay_mem_vector,
            decay_syn_vector,
        )
        return spikes, mem_out, syn_out, pending_out

    @staticmethod
    def backward(ctx, grad_spikes, grad_mem, grad_syn, grad_pending):
        options = ctx.options
        decay_mem, decay_syn = ctx.decays
        (
            mem_sequence,
            syn_sequence,
            not_clamped,
            decay_mem_vector,
            one_minus_decay_mem_vector,
            decay_syn_vector,
        ) = ctx.saved_tensors
        num_steps, batch = mem_sequence.shape[:2]
        neuron_shape = mem_sequence.shape[2:]
        num_neurons = math.prod(neuron_shape)
        num_elements = batch * num_neurons
        state_shape = (batch, *neuron_shape)
        grad_decay_mem_needed = needs_grad(decay_mem)
        grad_decay_syn_needed = needs_grad(decay_syn)

        # The surrogate derivative of the whole sequence in one torch call, so that the kernel works
        # with every surrogate that supports_surrogate accepts.
        constants = mem_sequence.new_tensor([options.threshold, 0.0])
        pseudo_derivative = options.surrogate.grad(torch.sub(mem_sequence, constants[0]))
        pseudo_derivative = pseudo_derivative.to(mem_sequence.dtype).contiguous()

        grad_drive = mem_sequence.new_empty((batch, num_steps, *neuron_shape))
        grad_mem_in = mem_sequence.new_empty(state_shape)
        grad_syn_in = mem_sequence.new_empty(state_shape)
        grad_pending_in = mem_sequence.new_empty(state_shape)
        # Time sums per batch entry and neuron, (1, batch, *shape) as decay_gradient expects.
        decay_mem_terms = mem_sequence.new_empty((1, *state_shape)) if grad_decay_mem_needed else None
        decay_syn_terms = mem_sequence.new_empty((1, *state_shape)) if grad_decay_syn_needed else None

        if num_elements > 0:
            _lif_backward_kernel[_launch_grid(num_elements, options.block_size)](
                grad_spikes.to(mem_sequence.dtype).contiguous(),
                pseudo_derivative,
                mem_sequence,
                syn_sequence if syn_sequence is not None else mem_sequence,
                not_clamped if not_clamped is not None else mem_sequence,
                decay_mem_vector,
                one_minus_decay_mem_vector,
                decay_syn_vector,
                constants,
                grad_mem.to(mem_sequence.dtype).contiguous(),
                grad_syn.to(mem_sequence.dtype).contiguous(),
                grad_pending.to(mem_sequence.dtype).contiguous(),
                grad_drive,
                grad_mem_in,
                grad_syn_in,
                grad_pending_in,
                decay_mem_terms if grad_decay_mem_needed else grad_mem_in,
                decay_syn_terms if grad_decay_syn_needed else grad_mem_in,
                num_elements,
                num_neurons,
                num_steps,
                SAVE_SYN=syn_sequence is not None,
                CLAMP=not_clamped is not None,
                DIFF_RESET=options.diff_reset,
                GRAD_DECAY_MEM=grad_decay_mem_needed,
                GRAD_DECAY_SYN=grad_decay_syn_needed,
                BLOCK=options.block_size,
            )
        elif decay_mem_terms is not None or decay_syn_terms is not None:
            # An empty batch contributes nothing to the decay gradients.
            decay_mem_terms = None if decay_mem_terms is None else decay_mem_terms.zero_()
            decay_syn_terms = None if decay_syn_terms is None else decay_syn_terms.zero_()

        return (
            grad_drive,
            grad_mem_in,
            grad_syn_in,
            grad_pending_in,
            decay_gradient(decay_mem, decay_mem_terms),
            decay_gradient(decay_syn, decay_syn_terms),
            None,
        )


def _check_decay(name: str, decay: Decay, neuron_shape: torch.Size) -> None:
    if not isinstance(decay, Tensor):
        return
    try:
        broadcast = torch.broadcast_shapes(decay.shape, neuron_shape)
    except RuntimeError:
        broadcast = None
    if broadcast != neuron_shape:
        raise ValueError(
            f"{name} of shape {tuple(decay.shape)} does not broadcast to the neuron shape "
            f"{tuple(neuron_shape)}. Give a float or a tensor broadcastable to the neuron shape."
        )


def _check_inputs(
    drive: Tensor,
    states: Tuple[Tuple[str, Tensor], ...],
    decays: Tuple[Tuple[str, Decay], ...],
    surrogate: SurrogateSpike,
    block_size: int,
) -> None:
    """Raise ValueError (or RuntimeError for a missing backend) for input the kernels do not support."""
    if not isinstance(surrogate, SurrogateSpike) or not supports_surrogate(surrogate):
        raise ValueError(
            f"lif_sequence_triton supports only Heaviside surrogates whose gradient is grad(x), got "
            f"{type(surrogate).__name__}. Run this population with lif_sequence or the plain loop."
        )
    if not isinstance(drive, Tensor) or drive.dtype not in _SUPPORTED_DTYPES:
        dtype = drive.dtype if isinstance(drive, Tensor) else type(drive).__name__
        raise ValueError(
            f"drive must be a float16, float32 or float64 tensor, got {dtype}. "
            "Convert it with .float() first, or run bfloat16 with lif_sequence."
        )
    if drive.dim() < 3 or drive.shape[1] < 1:
        raise ValueError(
            f"drive must be (batch, time >= 1, *shape) with at least one neuron dimension, "
            f"got shape {tuple(drive.shape)}. Add a neuron dimension with drive.unsqueeze(-1)."
        )

    state_shape = (drive.shape[0], *drive.shape[2:])
    for name, state in states:
        if tuple(state.shape) != state_shape:
            raise ValueError(
                f"{name} must have shape (batch, *shape) = {state_shape} to match drive, "
                f"got {tuple(state.shape)}."
            )
        if state.dtype != drive.dtype or state.device != drive.device:
            raise ValueError(
                f"{name} is {state.dtype} on {state.device}, but drive is {drive.dtype} on "
                f"{drive.device}. Move both to the same dtype and device."
            )
    for name, decay in decays:
        _check_decay(name, decay, drive.shape[2:])

    if block_size < 1 or block_size & (block_size - 1) != 0:
        raise ValueError(f"block_size must be a power of two, got {block_size}.")
    if not triton_available(drive):
        raise RuntimeError(
            f"Triton cannot run on {drive.device} tensors here: it needs Triton and a CUDA tensor, "
            "or a CPU tensor with TRITON_INTERPRET=1 set before lightning_snn.kernels.triton_lif is "
            "imported. Use lif_sequence instead."
        )


def lif_sequence_triton(
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
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> LIFSequenceOutput:
    """Run feed-forward LIF neurons over a whole drive sequence in one Triton launch per pass.

    Spikes and states equal those of :func:`~lightning_snn.kernels.lif.lif_sequence` without
    recurrence bit for bit, and gradients agree with it up to float rounding.

    Args:
        drive: Feed-forward drive ``X`` of shape ``(batch, time, *shape)``; ``X_t`` arrives at step
            ``t + 1``. CUDA, or CPU under ``TRITON_INTERPRET=1`` (see :func:`triton_available`).
        mem: Membrane potential before the first step, ``(batch, *shape)``.
        syn: Synaptic current before the first step, ``(batch, *shape)``.
        pending: Drive that arrives at the first step, ``(batch, *shape)``.
        decay_mem: Per-step membrane decay ``exp(-dt / tau_mem)``; a float or a tensor broadcastable
            to ``shape`` (learned when it requires a gradient).
        decay_syn: Per-step synaptic decay ``exp(-dt / tau_syn)``, like ``decay_mem``.
        threshold: Firing threshold.
        surrogate: Heaviside spike function whose ``grad(x)`` is the surrogate derivative (see
            :func:`~lightning_snn.kernels.lif.supports_surrogate`).
        diff_reset: Backpropagate through the reset term.
        clamp_max: Clip the membrane from above at this value after each update; None for no clip.
        block_size: Neurons (over batch and shape) per Triton program, a power of two.

    Returns:
        The spike sequence ``(batch, time, *shape)`` and the final membrane, current and pending
        drive.

    Raises:
        ValueError: For an unsupported surrogate, a drive that is not float16, float32 or float64,
            wrong shapes or dtypes, decays that do not broadcast to the neuron shape, or a block size
            that is not a power of two.
        RuntimeError: When Triton is missing or cannot run on the device of ``drive``.
    """
    _check_inputs(
        drive,
        (("mem", mem), ("syn", syn), ("pending", pending)),
        (("decay_mem", decay_mem), ("decay_syn", decay_syn)),
        surrogate,
        block_size,
    )
    options = _TritonLIFOptions(
        threshold=float(threshold),
        surrogate=surrogate,
        diff_reset=bool(diff_reset),
        clamp_max=None if clamp_max is None else float(clamp_max),
        block_size=int(block_size),
    )
    spikes, mem, syn, pending = _TritonLIFSequence.apply(
        drive, mem, syn, pending, decay_mem, decay_syn, options
    )
    return LIFSequenceOutput(spikes, mem, syn, pending)
