"""AlexNet's "fancy PCA" colour augmentation (Krizhevsky 2012, section 4.1), for any band count.

Each image gets ``sum_i alpha_i * lambda_i * p_i`` added to every pixel, with ``p_i, lambda_i``
the eigenvectors and eigenvalues of the band covariance over training pixels and
``alpha_i ~ N(0, 0.1)`` drawn once per image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PCA_ALPHA_STD = 0.1


@dataclass(frozen=True)
class PcaNoise:
    """AlexNet's colour augmentation over any number of bands."""

    eigvals: np.ndarray  # (C,)
    eigvecs: np.ndarray  # (C, C), columns are the eigenvectors

    @classmethod
    def fit(cls, pixels: np.ndarray) -> PcaNoise:
        """``pixels``: (N, C) normalised values."""
        cov = np.atleast_2d(np.cov(pixels, rowvar=False))
        vals, vecs = np.linalg.eigh(cov)
        return cls(np.clip(vals, 0.0, None).astype(np.float32), vecs.astype(np.float32))

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        alpha = rng.normal(0.0, PCA_ALPHA_STD, size=self.eigvals.shape).astype(np.float32)
        return self.eigvecs @ (alpha * self.eigvals)
