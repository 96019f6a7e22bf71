"""What a training step costs in time: freeze-aware FLOPs (`cost`, `flops`), the step time on a
GPU (`timing`, with `comm` for data-parallel traffic) and the training time of a dataset.

Nothing is imported here: `freezelab.memory.activations` records each op's `cost.Cost`, and
`flops` builds on the memory estimator's stages, so importing them eagerly would make a cycle.
"""
