"""Robust fitting of statsmodels linear mixed models.

statsmodels' optimisers sometimes stop on the boundary (zero variance
component) with a useless Hessian; a fit is accepted only when its
log-likelihood and fixed-effect standard errors are finite, trying the
optimisers in turn.

References
----------
Lindstrom MJ, Bates DM. Newton–Raphson and EM algorithms for linear
mixed-effects models for repeated-measures data. J Am Stat Assoc
1988;83:1014–1022 (the likelihood statsmodels' MixedLM maximises).
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
from statsmodels.regression.mixed_linear_model import MixedLM, MixedLMResults

from theranode.dosimetry.cohort.results import NotEstimable

logger = logging.getLogger(__name__)

#: Optimisers tried in order (L-BFGS first: fastest on large cohorts).
OPTIMISERS: tuple[str | list[str], ...] = ("lbfgs", ["bfgs", "cg"], "powell", "nm")


def fit_mixed(model: MixedLM, what: str) -> MixedLMResults | NotEstimable:
    """REML fit of ``model``; :class:`NotEstimable` when no optimiser gives a usable fit."""
    problems = []
    for method in OPTIMISERS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                result = model.fit(reml=True, method=method)
            except (np.linalg.LinAlgError, ValueError) as error:
                problems.append(f"{method}: {error}")
                continue
        if _usable(result):
            return result
        problems.append(f"{method}: non-finite likelihood or standard errors")
        logger.debug("Mixed model %s: optimiser %s gave an unusable fit", what, method)
    return NotEstimable(f"The mixed model {what} could not be fitted ({'; '.join(problems)}).")


def _usable(result: MixedLMResults) -> bool:
    values = np.concatenate([[result.llf], np.asarray(result.bse_fe), np.asarray(result.fe_params)])
    if not np.all(np.isfinite(values)):
        return False
    scale = np.abs(np.asarray(result.fe_params)) + 1.0
    return bool(np.all(np.asarray(result.bse_fe) < 1e6 * scale)) and bool(result.converged)
