"""Baselines and references: the exact GP oracle (and, later, TNP-D, ConvCNP, ...)."""
