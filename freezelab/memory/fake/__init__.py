"""What a CUDA training step allocates, replayed on fake CPU tensors.

The pieces `freezelab.memory.simulate` runs the step with. Nothing here touches
a GPU: the model runs on `FakeTensorMode` tensors whose fake device is "cpu" (a
fake "cuda" device cannot be used on a CPU-only build: autograd's
AccumulateGrad asks for a CUDA device guard and the process aborts). Where
PyTorch picks a different code path on CUDA than on CPU, the CUDA choice is
emulated:

* `ledger` - a TorchDispatchMode that sees every ATen op and books each new
  storage the way the CUDA caching allocator does, plus the cuBLAS workspaces
  and attention scratch the meta kernels do not show; `log` reads its
  time-ordered log (breakdown at a tick, peaks per phase, scaled peaks);
* `sdpa` - `F.scaled_dot_product_attention` with CUDA's backend choice, so
  autograd saves what it saves on a GPU (output + logsumexp, not the
  attention matrix), and the scratch of the fused backward kernels;
* `autocast` - the CUDA autocast policy where it differs from CPU autocast;
* `patches` - routes SDPA and transformers' padding-mask check to the
  emulation, for fake tensors only;
* `allocator` - replays the log through the caching allocator's pools to
  estimate `max_memory_reserved` and the block each allocation is handed.
"""
