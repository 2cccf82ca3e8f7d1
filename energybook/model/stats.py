"""Statistics that mean what they say, and sweet spots that survive, for the energy formulas.

The classical standard errors of :func:`energybook.model.fit.fit` assume independent noise of one size
(or one relative size) at every point. Our grids break both: the points of one *prefix group* (one
model, input length and batch, all produced by one generation in prefix mode) share their noise, and
the misfit of the formula, not the meter, dominates the residuals. This module adds, beside the
classical errors:

- HC3 standard errors (heteroscedasticity-consistent, MacKinnon and White 1985), :func:`standard_errors`;
- a bootstrap that resamples whole prefix groups, with percentile intervals and, per coefficient,
  the share of draws whose sign agrees with the estimate, :func:`bootstrap`, :func:`coefficient_statistics`;
- a lack-of-fit test against the repeat noise (reduced chi-square), :func:`repeat_noise`, :func:`lack_of_fit`;
- Table 3 by both weightings side by side, :func:`weighting_comparison`.

And for the sweet spot: a bootstrap interval on n_out*, the band of n_out within 2% of the best
(:func:`sweet_spot_intervals`), a two-phase estimate from the measured prefill and decode energies
(:func:`two_phase`), and every estimate of one model side by side (:func:`sweet_spot_comparison`).

Every function takes tidy tables (one row per point, ``n_in``, ``n_out`` in tokens, ``j_per_token`` in
joules per output token), never files: the repeat runs are read by the store and passed in.

The functions live in :mod:`energybook.model.stats_errors` (standard errors and the bootstrap),
:mod:`energybook.model.stats_noise` (lack of fit, weightings) and :mod:`energybook.model.stats_spots`
(sweet spots); this module re-exports them all, so every name imports from here.

Used in :doc:`/book/fitting` and :doc:`/book/sweet_spots`.
"""

from __future__ import annotations

from energybook.model.stats_errors import (  # noqa: F401
    PREFIX_GROUP,
    Bootstrap,
    CoefficientStats,
    _lstsq,
    _prepare,
    _weights,
    bootstrap,
    coefficient_statistics,
    logger,
    prefix_groups,
    standard_errors,
    statistics_frame,
)
from energybook.model.stats_noise import (  # noqa: F401
    LackOfFit,
    RepeatNoise,
    _pool,
    lack_of_fit,
    lack_of_fit_from_repeats,
    repeat_noise,
    weighting_comparison,
)
from energybook.model.stats_spots import (  # noqa: F401
    SweetSpotInterval,
    TwoPhase,
    _best_point,
    measured_batch,
    sweet_spot_comparison,
    sweet_spot_intervals,
    two_phase,
    two_phase_frame,
)
