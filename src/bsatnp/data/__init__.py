"""Your own data: tables and grids in original units in, predictions in original units out.

* :class:`Schema`: which columns or coordinates play which role (values, space, time,
  covariates) and in which units (a CRS for space, a unit for time).
* :class:`Normalizer`: fitted on the data a model is trained or conditioned on, saved with
  the model, applied on the way in and inverted on the way out.
* :mod:`bsatnp.data.tables`: pandas DataFrames, xarray Datasets/DataArrays and mappings of
  arrays read into :class:`Points`, and predictions written back into the container type
  of the targets with the targets' coordinates copied.
* :class:`TableTask`: training tasks drawn from a table (random, spatial-block or
  time-window splits) for fine-tuning with the :class:`~bsatnp.train.trainer.Trainer`.

The high-level entry point is :class:`bsatnp.predictor.Predictor`.
"""

from bsatnp.data.normalizer import Normalizer
from bsatnp.data.schema import Schema
from bsatnp.data.tables import Points, read_points

__all__ = ["Normalizer", "Points", "Schema", "read_points"]
