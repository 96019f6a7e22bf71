"""Memory estimates of a training step: analytic (instant) and simulated (fake tensors)."""
