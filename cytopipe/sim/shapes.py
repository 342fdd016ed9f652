"""Real-cell shapes: skewed, heavy-tailed clouds and a CD25 continuum (PANEL.md, "Real cells").

On ``shape="real"`` the generator replaces the standard normal variate behind
every positive population's log-normal (and behind the scatter clouds) by a
skew-t variate, standardised to unit spread, so clouds lean to one side and
have tails. On CD25 the CD4 cells form one continuum:

- conventional CD4 cells sit at their CD25 position, and a share of them
  (memory cells) trails continuously up through the CD25-intermediate level:
  their log CD25 moves up by a Beta(1, b) fraction of the distance to the Tregs;
- activated (CD25-intermediate) cells trail likewise, by a Beta(1, b) fraction of the distance to the Tregs;
- Tregs are CD25-high with a skew-t log CD25 leaning down, towards the conventional cells,
  and as wide as FOXP3+ cells are on real blood, where they span one to one and a half
  decades of CD25 (a log-CD25 spread of 0.5-0.8 natural-log units, drawn).

So the Tregs are a shoulder of the CD4 cloud along CD25, in most worlds with
no density valley of their own (a world that puts the Tregs some hundred-fold
above the conventional cells can keep a shallow dip); they stand apart only in CD25 x CD127 (CD127-low) and,
on the FOXP3 panel, FOXP3. Every number of a shape is drawn from ranges of
shapes (no number is chosen to suit a gate): skewness parameter alpha
uniform in -4..4 per channel, t degrees of freedom 3-10, the trailing Beta's
b 1-4, the Tregs' CD25 alpha -6..-2 and spread 0.5-0.8.

Examples
--------
>>> import numpy as np
>>> from cytopipe.sim.shapes import RealShape
>>> shape = RealShape.draw(np.random.SeedSequence(1), ("FSC-A",))
>>> 3 <= shape.df <= 10
True
"""

from __future__ import annotations

from dataclasses import dataclass
from math import lgamma

import numpy as np

__all__ = ["RealShape", "skew_t"]


def skew_t(z: np.ndarray, rng: np.random.Generator, *, alpha: float, df: float) -> np.ndarray:
    """A skew-t variate with unit standard deviation and zero mean, built from standard normals ``z``.

    Parameters
    ----------
    z
        Standard normal draws (one per event); their order is kept.
    rng
        Source of the extra draws (a half-normal and a chi-square per event).
    alpha
        Skewness parameter of the skew-normal (0: symmetric; negative: a tail to the left).
    df
        Degrees of freedom of the t mixing (> 2).

    Returns
    -------
    numpy.ndarray
        Same shape as ``z``.
    """
    delta = alpha / np.sqrt(1.0 + alpha**2)
    sn = delta * np.abs(rng.standard_normal(z.shape)) + np.sqrt(1.0 - delta**2) * z
    scale = np.sqrt(df / rng.chisquare(df, size=z.shape))
    # E[sn] = delta sqrt(2 / pi), E[sn^2] = 1; E[scale] from the chi distribution, E[scale^2] = df / (df - 2).
    m = delta * np.sqrt(2 / np.pi) * np.sqrt(df / 2) * np.exp(lgamma((df - 1) / 2) - lgamma(df / 2))
    return (sn * scale - m) / np.sqrt(df / (df - 2) - m**2)


@dataclass(frozen=True)
class RealShape:
    """The shape parameters of one lab's real cells. Draw one with :meth:`draw`.

    Attributes
    ----------
    alpha
        Per nominal channel, the skewness parameter of its clouds (-4..4).
    df
        Degrees of freedom of the t tails (3-10).
    trail_b
        ``b`` of the Beta(1, b) fraction by which conventional and activated cells trail up CD25 (1-4).
    treg_alpha
        Skewness parameter of the Tregs' log CD25 (-6..-2: leaning towards the conventional cells).
    treg_sigma
        Spread of the Tregs' log CD25 (0.5-0.8), before the world's width factor.
    """

    alpha: dict
    df: float
    trail_b: float
    treg_alpha: float
    treg_sigma: float

    def __hash__(self) -> int:
        return hash((self.df, self.trail_b, self.treg_alpha))

    @classmethod
    def draw(cls, seed, channels: tuple[str, ...]) -> RealShape:
        """Draw a shape for ``channels`` from ``seed`` (anything ``numpy.random.default_rng`` takes)."""
        rng = np.random.default_rng(seed)
        alpha = {ch: float(rng.uniform(-4, 4)) for ch in channels}
        return cls(alpha=alpha, df=float(rng.uniform(3, 10)), trail_b=float(rng.uniform(1, 4)),
                   treg_alpha=float(rng.uniform(-6, -2)), treg_sigma=float(rng.uniform(0.5, 0.8)))
