"""Training: configuration, learning-rate schedule and the training loop."""
