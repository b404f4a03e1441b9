"""A scikit-learn-style regressor over a :class:`~bsatnp.predictor.Predictor` (duck-typed).

``fit(X, y)`` only conditions (a neural process needs no training for a new data set);
``predict(X, return_std=True)`` and ``sample_y`` work like scikit-learn's Gaussian process,
and ``get_params``/``set_params``/``score`` make it usable in ``cross_val_score``, grid
searches and pipelines without scikit-learn being a dependency.

The columns of ``X`` are the model's roles in order: space (``dim_s`` columns), then time
(one, if the model reads time), then covariates (``dim_x``).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from bsatnp.conditioned import Conditioned
from bsatnp.models.base import NeuralProcess
from bsatnp.predictor import Predictor

_PARAMS = ("model", "crs", "space_scale", "value_transform", "chunk_size", "device")


class NeuralProcessRegressor:
    """Neural-process regression with the scikit-learn estimator interface.

    Args:
        model: A pretrained name (``"gp2d"``), a checkpoint path, a
            :class:`~bsatnp.predictor.Predictor` or a model.
        crs: CRS of the space columns (``"lonlat"`` for lon, lat degrees), or ``None``.
        space_scale: Length units per model unit, ``"auto"`` or ``"per_axis"``.
        value_transform: ``none``, ``log`` or ``log1p``.
        chunk_size: Targets per forward pass (``None``: the default).
        device: Where the model runs.
    """

    def __init__(self, model: str | os.PathLike[str] | Predictor | NeuralProcess = "gp2d",
                 crs: str | None = None, space_scale: float | str = "auto",
                 value_transform: str = "none", chunk_size: int | None = None,
                 device: str = "cpu") -> None:
        self.model = model
        self.crs = crs
        self.space_scale = space_scale
        self.value_transform = value_transform
        self.chunk_size = chunk_size
        self.device = device

    def __sklearn_tags__(self) -> Any:
        """Estimator tags for scikit-learn >= 1.6 (only scikit-learn calls this)."""
        from sklearn.utils import RegressorTags, Tags, TargetTags

        return Tags(estimator_type="regressor", target_tags=TargetTags(required=True),
                    regressor_tags=RegressorTags())

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Constructor arguments by name (scikit-learn protocol)."""
        return {name: getattr(self, name) for name in _PARAMS}

    def set_params(self, **params: Any) -> NeuralProcessRegressor:
        """Set constructor arguments (scikit-learn protocol).

        Raises:
            ValueError: On an unknown parameter.
        """
        unknown = sorted(set(params) - set(_PARAMS))
        if unknown:
            raise ValueError(f"unknown parameter(s) {unknown}; valid: {list(_PARAMS)}")
        for name, value in params.items():
            setattr(self, name, value)
        return self

    def fit(self, X: Any, y: Any) -> NeuralProcessRegressor:  # noqa: N803 (sklearn names)
        """Condition on observations ``X [N, D]`` with values ``y [N]`` or ``[N, Dv]``.

        Raises:
            ValueError: On shapes that do not fit the model, or no valid observation.
        """
        predictor = self._predictor()
        if predictor.model.likelihood != "gaussian":
            raise ValueError(f"{self.model!r} predicts {predictor.model.likelihood} classes; "
                             "NeuralProcessRegressor serves models of numeric values (e.g. "
                             "'gp2d'): use Predictor for class probabilities")
        X, y = self._features(X, predictor), np.asarray(y, dtype=np.float64)
        if y.ndim == 1:
            y = y[:, None]
        if y.ndim != 2 or len(y) != len(X):
            raise ValueError(f"y must be [N] or [N, Dv] with N = {len(X)} rows of X, got "
                             f"shape {y.shape}")
        self.n_outputs_ = y.shape[1]
        self.value_names_ = (predictor.schema.values if predictor.schema is not None
                             else tuple(f"y{j}" for j in range(y.shape[1])))
        if len(self.value_names_) != y.shape[1]:
            raise ValueError(f"y has {y.shape[1]} output(s); the model predicts "
                             f"{len(self.value_names_)}")
        data = {**self._columns(X, predictor),
                **{name: y[:, j] for j, name in enumerate(self.value_names_)}}
        roles = self._roles(predictor)
        self.conditioned_: Conditioned = predictor.condition(
            data, space_scale=self.space_scale, value_transform=self.value_transform, **roles)
        self.n_features_in_ = X.shape[1]
        return self

    def predict(self, X: Any, return_std: bool = False) -> Any:  # noqa: N803
        """Predictive mean ``[N]`` (``[N, Dv]`` for several outputs), and std if asked."""
        out = self._predict(X)
        mean, std = self._stack(out, "mean"), self._stack(out, "std")
        return (mean, std) if return_std else mean

    def sample_y(self, X: Any, n_samples: int = 1,  # noqa: N803
                 random_state: int | None = 0) -> np.ndarray:
        """Marginal samples ``[N, n_samples]`` (independent across the rows of ``X``).

        Raises:
            ValueError: If ``n_samples`` is not a positive integer.
        """
        if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) \
                or n_samples < 1:
            raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}")
        out = self._predict(X, n_samples=n_samples, seed=random_state)
        samples = self._stack(out, "samples")  # [S, N] or [S, N, Dv]
        return np.moveaxis(samples, 0, -1)

    def score(self, X: Any, y: Any) -> float:  # noqa: N803
        """Coefficient of determination R² of the predictive mean."""
        y = np.asarray(y, dtype=np.float64)
        mean = self.predict(X).reshape(y.shape)
        residual = ((y - mean) ** 2).sum()
        total = ((y - y.mean(0)) ** 2).sum()
        return float(1.0 - residual / total) if total > 0 else 0.0

    # ------------------------------------------------------------------ helpers
    def _predict(self, X: Any, **options: Any) -> dict[str, np.ndarray]:  # noqa: N803
        if not hasattr(self, "conditioned_"):
            raise ValueError("this NeuralProcessRegressor is not fitted yet: call fit(X, y)")
        predictor = self.conditioned_.predictor
        X = self._features(X, predictor)
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} columns; fit saw {self.n_features_in_}")
        return self.conditioned_.predict(self._columns(X, predictor),
                                         chunk_size=self.chunk_size, **options)

    def _stack(self, out: dict[str, np.ndarray], name: str) -> np.ndarray:
        if self.n_outputs_ == 1:
            return out[name].astype(np.float64)
        return np.stack([out[f"{value}_{name}"] for value in self.value_names_], -1)

    def _predictor(self) -> Predictor:
        model = self.model
        if isinstance(model, Predictor):
            return model
        if isinstance(model, NeuralProcess):
            return Predictor(model)
        if isinstance(model, (str, os.PathLike)) and os.path.isfile(model):
            return Predictor.load(model, device=self.device)
        return Predictor.from_pretrained(str(model), device=self.device)

    @staticmethod
    def _features(X: Any, predictor: Predictor) -> np.ndarray:  # noqa: N803
        X = np.asarray(X, dtype=np.float64)
        if X.ndim == 1:
            X = X[:, None]
        want = sum(predictor.model.width(r) for r in ("s", "t", "x"))
        if X.ndim != 2 or X.shape[1] != want:
            raise ValueError(f"X must be [N, {want}] (space, then time, then covariates) for "
                             f"this model, got shape {X.shape}")
        return X

    @staticmethod
    def _names(predictor: Predictor) -> dict[str, list[str]]:
        schema = predictor.schema
        if schema is not None:
            return {"space": list(schema.space), "time": [schema.time] if schema.time else [],
                    "covariates": list(schema.covariates)}
        model = predictor.model
        return {"space": [f"s{i}" for i in range(model.width("s"))],
                "time": ["t"] if model.width("t") else [],
                "covariates": [f"x{i}" for i in range(model.width("x"))]}

    def _columns(self, X: np.ndarray, predictor: Predictor) -> dict[str, np.ndarray]:  # noqa: N803
        names = [n for group in self._names(predictor).values() for n in group]
        return {name: X[:, i] for i, name in enumerate(names)}

    def _roles(self, predictor: Predictor) -> dict[str, Any]:
        if predictor.schema is not None:
            return {}
        names = self._names(predictor)
        return {"values": self.value_names_,
                "space": tuple(names["space"]), "crs": self.crs,
                "time": names["time"][0] if names["time"] else None,
                "covariates": tuple(names["covariates"])}
