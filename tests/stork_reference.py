"""An independent float64 NumPy re-statement of Stork's step-by-step execution model.

The library simulates layer after layer over whole sequences. This module instead advances every group
by one step, then lets every connection add its projection of the current output into the target
group's input buffer for the next step, as Stork's ``RecurrentSpikingModel.run`` does. Each
group's update is written from the published equations, not from the library's code. Tests compare the
two on random networks.
"""

import math

import numpy as np


def heaviside(x):
    return (x > 0).astype(np.float64)


class Group:
    """A population with named state variables and one input buffer per receptor."""

    receptors = ("input",)

    def __init__(self, size, dt, threshold=1.0):
        self.size = size
        self.dt = dt
        self.threshold = threshold
        self.out = None
        self.record = {}

    def decay(self, tau):
        return math.exp(-self.dt / tau)

    def reset(self, batch):
        self.inputs = {name: np.zeros((batch, self.size)) for name in self.receptors}
        self.out = np.zeros((batch, self.size))
        self.record = {}

    def clear_input(self):
        for name in self.inputs:
            self.inputs[name] = np.zeros_like(self.inputs[name])

    def store(self, **values):
        for key, value in values.items():
            self.record.setdefault(key, []).append(value.copy())


class InputGroup(Group):
    def feed(self, x):
        self.data = x

    def evolve(self, t):
        self.out = self.data[:, t]


class LIFGroup(Group):
    def __init__(self, size, dt, tau_mem, tau_syn, threshold=1.0):
        super().__init__(size, dt, threshold)
        self.lm, self.ls = self.decay(tau_mem), self.decay(tau_syn)

    def reset(self, batch):
        super().reset(batch)
        self.mem = np.zeros((batch, self.size))
        self.syn = np.zeros((batch, self.size))

    def evolve(self, t):
        out = heaviside(self.mem - self.threshold)
        new_syn = self.ls * self.syn + self.inputs["input"]
        new_mem = (self.lm * self.mem + (1 - self.lm) * self.syn) * (1.0 - out)
        self.out, self.mem, self.syn = out, new_mem, new_syn
        self.store(out=out, mem=new_mem)


class AdaptiveLIFGroup(LIFGroup):
    def __init__(self, size, dt, tau_mem, tau_syn, tau_ada, adapt_a, threshold=1.0):
        super().__init__(size, dt, tau_mem, tau_syn, threshold)
        self.la, self.a = self.decay(tau_ada), adapt_a

    def reset(self, batch):
        super().reset(batch)
        self.ada = np.zeros((batch, self.size))

    def evolve(self, t):
        out = heaviside(self.mem - self.threshold)
        new_syn = self.ls * self.syn + self.inputs["input"]
        # The trace is charged by the previous step's output, still in self.out here.
        new_ada = self.la * self.ada + self.out
        new_mem = (self.lm * self.mem + (1 - self.lm) * (self.syn - self.a * self.ada)) * (1.0 - out)
        self.out, self.mem, self.syn, self.ada = out, new_mem, new_syn, new_ada
        self.store(out=out, mem=new_mem)


class ExcInhLIFGroup(Group):
    receptors = ("exc", "inh")

    def __init__(self, size, dt, tau_mem, tau_exc, tau_inh, threshold=1.0):
        super().__init__(size, dt, threshold)
        self.lm, self.le, self.li = self.decay(tau_mem), self.decay(tau_exc), self.decay(tau_inh)

    def reset(self, batch):
        super().reset(batch)
        self.mem = np.zeros((batch, self.size))
        self.exc = np.zeros((batch, self.size))
        self.inh = np.zeros((batch, self.size))

    def evolve(self, t):
        out = heaviside(self.mem - self.threshold)
        new_exc = self.le * self.exc + self.inputs["exc"]
        new_inh = self.li * self.inh + self.inputs["inh"]
        net = self.exc - self.inh
        new_mem = (self.lm * self.mem + (1 - self.lm) * net) * (1.0 - out)
        self.out, self.mem, self.exc, self.inh = out, new_mem, new_exc, new_inh
        self.store(out=out, mem=new_mem)


class ReceptorLIFGroup(Group):
    """AMPA/NMDA/GABA synapses (Stork's ``Exc2InhLIFGroup``)."""

    receptors = ("exc", "inh")

    def __init__(self, size, dt, tau_mem, tau_ampa, tau_nmda, tau_gaba, threshold=1.0):
        super().__init__(size, dt, threshold)
        self.lm = self.decay(tau_mem)
        self.lA, self.lN, self.lG = self.decay(tau_ampa), self.decay(tau_nmda), self.decay(tau_gaba)

    def reset(self, batch):
        super().reset(batch)
        shape = (batch, self.size)
        self.mem, self.ampa, self.nmda, self.gaba = (np.zeros(shape) for _ in range(4))

    def evolve(self, t):
        out = heaviside(self.mem - self.threshold)
        new_ampa = self.lA * self.ampa + self.inputs["exc"]
        new_gaba = self.lG * self.gaba + self.inputs["inh"]
        new_nmda = self.lN * self.nmda + (1 - self.lN) * self.ampa
        net = 0.5 * (self.ampa + self.nmda) - self.gaba
        new_mem = (self.lm * self.mem + (1 - self.lm) * net) * (1.0 - out)
        self.out, self.mem = out, new_mem
        self.ampa, self.nmda, self.gaba = new_ampa, new_nmda, new_gaba
        self.store(out=out, mem=new_mem)


class ReadoutGroup(Group):
    def __init__(self, size, dt, tau_mem, tau_syn, initial_state=-1e-3):
        super().__init__(size, dt)
        self.lm, self.ls = self.decay(tau_mem), self.decay(tau_syn)
        self.initial_state = initial_state

    def reset(self, batch):
        super().reset(batch)
        self.mem = np.full((batch, self.size), self.initial_state)
        self.syn = np.zeros((batch, self.size))

    def evolve(self, t):
        new_syn = self.ls * self.syn + self.inputs["input"]
        new_mem = self.lm * self.mem + (1 - self.lm) * self.syn
        self.out, self.mem, self.syn = new_mem, new_mem, new_syn
        self.store(out=new_mem, mem=new_mem)


class Connection:
    """Dense synapses; ``weight`` has shape (target size, source size) like ``nn.Linear``."""

    def __init__(self, source, target, weight, receptor=None):
        self.source, self.target, self.weight = source, target, weight
        self.receptor = receptor or target.receptors[0]

    def propagate(self):
        self.target.inputs[self.receptor] = self.target.inputs[self.receptor] + self.source.out @ self.weight.T


def run(groups, connections, x):
    """Simulate ``groups`` (the first is the input) on ``x`` of shape (batch, time, inputs)."""
    batch, steps = x.shape[:2]
    for group in groups:
        group.reset(batch)
    groups[0].feed(x)
    for t in range(steps):
        for group in groups:
            group.evolve(t)
            group.clear_input()
        for connection in connections:
            connection.propagate()
    return {id(group): {key: np.stack(values, axis=1) for key, values in group.record.items()} for group in groups[1:]}
