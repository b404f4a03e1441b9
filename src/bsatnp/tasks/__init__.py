"""Synthetic tasks: GP kernels, hyperparameter priors, GP sampling, the 2D-GP protocol."""
