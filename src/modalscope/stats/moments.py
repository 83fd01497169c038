"""Running mean, variance and third central moment per neuron, mergeable: the sufficient
statistics of the skewness-corrected t-test (stats/one_sample.py).

Why: Δ for a real study is [5,000 inputs x 32 layers x 11,008 neurons]; we never hold it.
Each block of inputs updates (n, mean, M2, M3) in float64 with Chan et al.'s parallel formula
(M3: Pébay 2008, eq. 2.1), which is exact to rounding and lets shards computed apart (other
processes, other GPUs) combine into the same values as one pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class RunningMoments:
    """n, mean, M2 = Σ(x - mean)² and M3 = Σ(x - mean)³ per neuron, over the rows added so far."""

    n: np.ndarray = field(default_factory=lambda: np.zeros(0))
    mean: np.ndarray = field(default_factory=lambda: np.zeros(0))
    m2: np.ndarray = field(default_factory=lambda: np.zeros(0))
    m3: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def add(self, block: np.ndarray, complete: bool = False) -> None:
        """Add rows of `block` [inputs, neurons]; NaNs (missing values) are skipped. `complete`:
        the caller knows the block holds no NaN, so the masks are skipped (the same numbers:
        a sum with nothing to skip adds what nansum adds, in the same order)."""
        block = np.asarray(block, dtype=np.float64)
        if complete and block.shape[0]:
            n_b = np.full(block.shape[1], float(block.shape[0]))
            mean_b = block.sum(axis=0) / n_b
            centred = block - mean_b
        else:
            present = ~np.isnan(block)  # NaN is a missing value (extraction refuses inf)
            n_b = present.sum(axis=0).astype(np.float64)
            with np.errstate(invalid="ignore", divide="ignore"):
                mean_b = np.where(n_b > 0, np.nansum(block, axis=0) / n_b, 0.0)
            centred = np.where(present, block - mean_b, 0.0)
        m2_b = np.einsum("ij,ij->j", centred, centred)  # no [inputs, neurons] square kept for it
        centred *= centred * centred  # in place: the cubes (centred is this call's own array)
        self.merge(RunningMoments(n_b, mean_b, m2_b, centred.sum(axis=0)))

    def state_dict(self) -> dict[str, np.ndarray]:
        return {"n": self.n, "mean": self.mean, "m2": self.m2, "m3": self.m3}

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> "RunningMoments":
        n = np.asarray(state["n"])
        m3 = np.asarray(state["m3"]) if "m3" in state else np.full(n.shape, np.nan)  # saved before M3
        return cls(n, np.asarray(state["mean"]), np.asarray(state["m2"]), m3)

    def merge(self, other: "RunningMoments") -> None:
        if self.n.size == 0:
            self.n, self.mean, self.m2 = other.n.copy(), other.mean.copy(), other.m2.copy()
            self.m3 = other.m3.copy() if other.m3.size else np.full(other.n.shape, np.nan)
            return
        n = self.n + other.n
        delta = other.mean - self.mean
        with np.errstate(invalid="ignore", divide="ignore"):
            share = np.where(n > 0, other.n / n, 0.0)
            inverse = np.where(n > 0, 1.0 / n, 0.0)
        own_m3 = self.m3 if self.m3.size else np.full(self.n.shape, np.nan)
        other_m3 = other.m3 if other.m3.size else np.full(other.n.shape, np.nan)
        # Pébay (2008): M3 = M3a + M3b + δ³ na nb (na - nb) / n² + 3 δ (na M2b - nb M2a) / n
        self.m3 = (own_m3 + other_m3 + delta**3 * self.n * share * (self.n - other.n) * inverse
                   + 3.0 * delta * (self.n * other.m2 - other.n * self.m2) * inverse)
        self.mean = self.mean + delta * share
        self.m2 = self.m2 + other.m2 + delta**2 * self.n * share
        self.n = n

    @property
    def sd(self) -> np.ndarray:
        """Sample standard deviation (ddof = 1); NaN where n < 2."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.sqrt(np.where(self.n > 1, self.m2 / (self.n - 1), np.nan))

    @property
    def skewness(self) -> np.ndarray:
        """Sample skewness g1 = (M3 / n) / (M2 / n)^1.5 (the moment estimator, divisor n, as
        scipy.stats.skew with bias=True); NaN where n < 3 or M2 = 0."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where((self.n > 2) & (self.m2 > 0), (self.m3 / self.n) / (self.m2 / self.n) ** 1.5, np.nan)
