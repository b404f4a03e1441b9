"""Input/output: checkpoints and import of reference (dl4bi) parameters."""
