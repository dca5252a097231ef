"""Run every cohort analysis on a :class:`~theranode.dosimetry.cohort.data.CohortData` record.

:func:`analyse_cohort` never raises for a lack of data: each analysis that
the data do not allow comes back as
:class:`~theranode.dosimetry.cohort.results.NotEstimable` with its reason.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from theranode.dosimetry.cohort.ctcae import EgfrEquation
from theranode.dosimetry.cohort.data import CohortData
from theranode.dosimetry.cohort.distributions import dose_distributions, lesion_index_distributions
from theranode.dosimetry.cohort.labs import (
    LabWindows,
    add_computed_egfr,
    lab_changes,
    toxicity_table,
)
from theranode.dosimetry.cohort.response import dose_response, tumour_control
from theranode.dosimetry.cohort.results import (
    CohortCounts,
    CohortReport,
    Endpoint,
    MethodChoices,
)
from theranode.dosimetry.cohort.survival import overall_survival, survival_by_index
from theranode.dosimetry.cohort.toxicity import dose_toxicity_correlations
from theranode.dosimetry.cohort.trend import cycle_trend

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnalysisOptions:
    """Choices of the cohort analyses (recorded in the report's ``methods``).

    Parameters
    ----------
    egfr_equation
        Equation for eGFR computed from creatinine (the paper: CKD-EPI; the
        2009 equation was current for its 2016–2022 data).
    egfr_lln
        Lower limit of normal for eGFR rows without one (CTCAE grade 1).
    windows
        Time windows selecting laboratory values.
    spline_df
        Degrees of freedom of the dose–response B-spline.
    seed
        Seed of the LOESS trace estimate.
    """

    egfr_equation: EgfrEquation = EgfrEquation.CKD_EPI_2009
    egfr_lln: float = 90.0
    windows: LabWindows = field(default_factory=LabWindows)
    spline_df: int = 4
    seed: int = 0

    def method_choices(self) -> MethodChoices:
        """The :class:`MethodChoices` these options amount to."""
        w = self.windows
        return MethodChoices(
            egfr_equation=self.egfr_equation.value,
            egfr_lln=self.egfr_lln,
            baseline_window_days=w.baseline_days,
            month3_window=(
                f"last injection + {w.month3_target_days} d ± {w.month3_halfwidth_days} d, nearest"
            ),
            month12_window=(
                f"last injection + {w.month12_target_days} d "
                f"± {w.month12_halfwidth_days} d, nearest"
            ),
            toxicity_window=f"after the first injection up to the last injection + "
            f"{w.therapy_tail_days} d",
        )


def analyse_cohort(data: CohortData, options: AnalysisOptions = AnalysisOptions()) -> CohortReport:
    """All analyses of Hebert et al. 2024 on ``data``."""
    labs = add_computed_egfr(data, options.egfr_equation)
    logger.info(
        "Cohort analysis: %d patients, %d lesions, %d lab values",
        len(data.patients),
        len(data.lesions),
        len(labs),
    )
    return CohortReport(
        counts=CohortCounts(
            patients=int(len(data.patients)),
            cycles=int(len(data.cycles)),
            lesions=int(len(data.lesions)),
            lab_values=int(len(data.labs)),
            dose_rows=int(len(data.doses)),
        ),
        methods=options.method_choices(),
        toxicity=toxicity_table(data, labs, options.windows, options.egfr_lln),
        lab_changes=lab_changes(data, labs, options.windows),
        distributions=dose_distributions(data),
        lesion_indices=lesion_index_distributions(data),
        trend=cycle_trend(data),
        dose_response=dose_response(data, options.spline_df),
        tumour_control=tumour_control(data),
        correlations=dose_toxicity_correlations(data, labs, options.windows, options.seed),
        survival_overall=tuple(overall_survival(data, endpoint) for endpoint in Endpoint),
        survival=survival_by_index(data),
        warnings=data_warnings(data),
    )


def data_warnings(data: CohortData) -> tuple[str, ...]:
    """Data-quality remarks worth showing next to the results."""
    remarks = []
    small = data.lesions.loc[data.lesions["vol_bl_cm3"] < 2.0]
    if len(small):
        remarks.append(
            f"{len(small)} lesion(s) below 2 cm³ at baseline are included "
            "(the paper excluded them: recovery coefficient ≈ 0.5)."
        )
    lesion_ids = set(zip(data.lesions["patient_id"], data.lesions["lesion_id"], strict=True))
    dosed = data.doses.loc[data.doses["kind"] == "lesion"]
    without_volume = {
        key for key in zip(dosed["patient_id"], dosed["voi"], strict=True) if key not in lesion_ids
    }
    if without_volume:
        remarks.append(f"{len(without_volume)} lesion(s) have doses but no volume record.")
    return tuple(remarks)
