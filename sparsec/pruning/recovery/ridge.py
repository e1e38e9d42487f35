"""The ridge normal equations of one layer's refit, accumulated batch by batch, and their solve.

Invariants: only G = [X 1]ᵀ[X 1], C = [X 1]ᵀY* and ‖Y*‖² are kept (float64), so the calibration
error of any [W; b] follows exactly from them; a solve keeps a weight's zeros (each output
column is solved over its nonzero rows), shrinks toward the given prior (not toward zero) and
never penalises the bias row. See docs/recovery.md for the algebra.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

RIDGES = (1e-3, 1e-2, 1e-1, 1.0, 10.0)  # the candidates a layer's ridge is chosen from
DEFAULT_RIDGE = 1e-2  # when it cannot be chosen (one calibration batch) or for a norm
PROBE_COLUMNS = 48  # output columns the choice is measured on


class Normal:
    """The running normal equations of one layer: G = [X 1]ᵀ[X 1], C = [X 1]ᵀY*, ‖Y*‖²."""

    def __init__(self, bias: bool) -> None:
        self.bias = bias
        self.g: np.ndarray | Any = 0.0
        self.c: np.ndarray | Any = 0.0
        self.yy = 0.0
        self.half = _Sums(0.0, 0.0)  # G and C of the even-numbered batches alone

    def add(self, x: np.ndarray, y: np.ndarray, batch: int = 0) -> None:
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        if self.bias:
            x = np.hstack([x, np.ones((len(x), 1))])
        gram, cross = x.T @ x, x.T @ y
        self.g += gram  # a float 0 at first, then the array summed into in place
        self.c += cross
        self.yy += float(np.square(y).sum())
        if batch % 2 == 0:
            self.half.g += gram
            self.half.c += cross

    def error(self, matrix: np.ndarray) -> float:
        """‖[X 1]·matrix − Y*‖² from the accumulated sums."""
        value = np.sum(matrix * (self.g @ matrix)) - 2 * np.sum(matrix * self.c) + self.yy
        return max(float(value), 0.0)

    def solve(self, old: np.ndarray, ridge: float) -> np.ndarray:
        """The refit of ``old`` (``matrix``'s form), its zeros kept."""
        return solve(self, old[: len(old) - self.bias] != 0, ridge, old)

    def chosen_ridge(self, old: np.ndarray, default: float) -> float:
        """The ridge of ``RIDGES`` whose refit of ``old`` on the even-numbered calibration
        batches best predicts the odd-numbered ones and the other way round (two-fold
        cross-validation, on ``PROBE_COLUMNS`` output columns spread over the layer); ``default``
        when a half holds no batch."""
        other = _Sums(self.g - self.half.g, self.c - self.half.c)
        if not (np.any(self.half.g) and np.any(other.g)):
            return default
        columns = np.unique(np.linspace(0, old.shape[1] - 1, PROBE_COLUMNS).astype(int))
        mask, prior = old[: len(old) - self.bias, columns] != 0, old[:, columns]
        halves = [_Sums(half.g, half.c[:, columns]) for half in (self.half, other)]

        def held_out(ridge: float) -> float:
            return sum(
                test.fit_error(solve(train, mask, ridge, prior))
                for train, test in (halves, halves[::-1])
            )

        return min(RIDGES, key=held_out)


@dataclass
class _Sums:
    """G = [X 1]ᵀ[X 1] and C = [X 1]ᵀY* of some calibration rows."""

    g: np.ndarray | Any
    c: np.ndarray | Any

    def fit_error(self, matrix: np.ndarray) -> float:
        """‖[X 1]·matrix − Y*‖² over these rows, less the ‖Y*‖² every candidate shares."""
        return float(np.sum(matrix * (self.g @ matrix)) - 2 * np.sum(matrix * self.c))


class ChannelNormal:
    """Per-channel sums for fitting y* ≈ a·y + b channel by channel (a normalization's output
    y in the pruned model, y* in the original): n, Σy, Σy², Σy*, Σy·y*, Σy*²."""

    def __init__(self) -> None:
        self.n, self.sx, self.sxx, self.sy, self.sxy, self.yy = 0, 0.0, 0.0, 0.0, 0.0, 0.0

    def add(self, x: np.ndarray, y: np.ndarray, batch: int = 0) -> None:
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        self.n += len(x)
        self.sx, self.sxx = self.sx + x.sum(0), self.sxx + np.square(x).sum(0)
        self.sy, self.sxy = self.sy + y.sum(0), self.sxy + (x * y).sum(0)
        self.yy += float(np.square(y).sum())

    def error(self, matrix: np.ndarray) -> float:
        """Σ_c ‖a_c·y_c + b_c − y*_c‖² for ``matrix`` = [a; b]."""
        a, b = matrix
        value = np.sum(
            a * a * self.sxx
            + 2 * a * b * self.sx
            + self.n * b * b
            - 2 * a * self.sxy
            - 2 * b * self.sy
        )
        return max(float(value) + self.yy, 0.0)

    def solve(self, old: np.ndarray, ridge: float) -> np.ndarray:
        """[a; b]: per channel, the 2x2 ridge normal equations, a shrunk toward ``old``'s 1."""
        mean = float(np.mean(self.sxx))
        penalty = ridge * mean if mean > 0 else ridge
        g11, g12, g22 = self.sxx + penalty, self.sx, np.full_like(self.sxx, float(max(self.n, 1)))
        r1, r2 = self.sxy + penalty * old[0], self.sy
        det = g11 * g22 - g12 * g12
        return np.vstack([(r1 * g22 - g12 * r2) / det, (g11 * r2 - g12 * r1) / det])

    def chosen_ridge(self, old: np.ndarray, default: float) -> float:
        """``default``: two parameters per channel fit over every position leave nothing to tune."""
        return default


def solve(normal: Normal, mask: np.ndarray, ridge: float, prior: np.ndarray) -> np.ndarray:
    """Ridge solution of the normal equations, shrunk toward ``prior`` (the weights as pruning
    left them), column by column over each column's nonzero rows (columns with the same
    pattern solved together, the others stacked by size); the bias row is not penalised."""
    g, c = normal.g, normal.c
    k = mask.shape[0]
    diagonal = np.diag(g)[:k]
    scale = float(diagonal.mean()) if k and diagonal.mean() > 0 else 1.0
    penalty = np.zeros(len(g))
    penalty[:k] = ridge * scale
    rhs = c + penalty[:, None] * prior
    rows = np.vstack([mask, np.ones((len(g) - k, mask.shape[1]), dtype=bool)])
    solution = np.zeros_like(c)
    patterns, which = np.unique(rows.T, axis=0, return_inverse=True)
    which = which.reshape(-1)
    shared = np.bincount(which, minlength=len(patterns)) > 1
    for index in np.flatnonzero(shared):  # one system, the right-hand sides of every column with it
        keep, columns = np.flatnonzero(patterns[index]), np.flatnonzero(which == index)
        if keep.size:
            system = g[np.ix_(keep, keep)] + np.diag(penalty[keep])
            solution[np.ix_(keep, columns)] = _linear_solve(system, rhs[np.ix_(keep, columns)])
    _solve_alone(g, penalty, rhs, rows, np.flatnonzero(~shared[which]), solution)
    return solution


STACK_BYTES = 64 << 20  # the systems solved in one stacked call


def _solve_alone(g, penalty, rhs, rows, columns: np.ndarray, solution: np.ndarray) -> None:
    """Solve each of ``columns`` (a pattern of its own, as under N:M) over its kept ``rows``,
    stacking the systems of one size into batched solves of up to ``STACK_BYTES``."""
    counts = rows[:, columns].sum(axis=0)
    for size in np.unique(counts[counts > 0]):
        group = columns[counts == size]
        step = max(1, STACK_BYTES // (8 * int(size) ** 2))
        for start in range(0, len(group), step):
            chunk = group[start : start + step]
            keep = np.argsort(~rows[:, chunk].T, axis=1, kind="stable")[
                :, :size
            ]  # kept rows, in order
            systems = g[keep[:, :, None], keep[:, None, :]]
            systems[:, np.arange(size), np.arange(size)] += penalty[keep]
            solution[keep, chunk[:, None]] = _linear_solve(
                systems, rhs[keep, chunk[:, None]][..., None]
            )[..., 0]


def _linear_solve(system: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """``system``·x = ``rhs`` (or a stack of them); least squares where singular even with the
    ridge (e.g. ridge = 0)."""
    try:
        return np.linalg.solve(system, rhs)
    except np.linalg.LinAlgError:
        if system.ndim == 2:
            return np.linalg.lstsq(system, rhs, rcond=None)[0]
        return np.stack([_linear_solve(one, right) for one, right in zip(system, rhs)])
