// Python bindings of the CPU kernels in this folder, built into one extension module.

#include "kernels.h"


PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  using namespace lightning_snn;
  module.def("forward_step", &forward_step, "One fused LIF step (spikes, reset, membrane, current).");
  module.def("backward_step", &backward_step, "One fused step of the LIF adjoint recurrence.");
  module.def("forward_sequence", &forward_sequence, "All forward steps of a LIF population without recurrence.");
  module.def("backward_steps", &backward_steps, "A chunk of adjoint steps of a LIF population without recurrence.");
  module.def("backward_sequence_superspike", &backward_sequence_superspike,
             "The backward pass of a LIF population (optionally recurrent), SuperSpike surrogate.");
  module.def("forward_sequence_recurrent", &forward_sequence_recurrent,
             "All forward steps of a LIF population with a dense or convolutional recurrence.");
  module.def("find_events", &find_events, "Rows, columns, values and row offsets of the nonzero entries.");
  module.def("conv_forward_events", &conv_forward_events, "Convolution of sparse inputs, summed event by event.");
  module.def("conv_weight_gradient_events", &conv_weight_gradient_events,
             "Convolution weight gradient from the nonzero inputs only.");
  module.def("max_pool2d_forward", &max_pool2d_forward, "Max pooling that keeps the window index of each maximum.");
  module.def("max_pool2d_backward", &max_pool2d_backward, "Gradient of max_pool2d_forward.");
}
