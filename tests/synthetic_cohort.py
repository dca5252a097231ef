"""A synthetic cohort that matches the paper's marginals, with known truth.

With the defaults (35 patients) the generator reproduces approximately: the
number of cycles (Table 2: 2 cycles 6 %, 3 cycles 8 %, 4 cycles 86 %), 146
lesions (1–9 per patient; liver 65 %, lymph nodes 25 %, mesentery 4 %,
pancreas 4 %, peritoneum 2 %), the per-cycle absorbed dose medians of Table
5 (lesions decreasing by a factor ≈ 0.84 per cycle, spleen increasing), the
lesion indices of Table 6, the laboratory means of Table 4 and the
survival medians and hazard ratios of Fig 6.

Generating models, chosen so that each estimand equals what the analyses
fit:

- ΔV% = β₀ + β₁·(total lesion AD) + u_patient + ε (linear mixed model with
  the patient random intercept of Fig 3; u and ε normal truncated at
  ±2.4 SD, total AD ≤ 300 Gy as in the paper, so ΔV% stays above −100
  without clipping); tumour control ΔV% ≤ 0 then has marginal probability
  50 % at D50 = −β₀/β₁ (u + ε is symmetric).
- Survival: exponential latent times (after an event-free first
  ``EVENT_FREE_MONTHS``) to death and to progression whose
  hazards are proportional, with ratios ``hazard_ratio_os`` and
  ``hp`` for patients whose ``split_index`` (mean or min lesion total AD) is
  above the cohort median. Then OS has hazard ratio ``hazard_ratio_os``
  and PFS = min(progression, death) has exactly ``hazard_ratio_pfs``, so a
  Cox model on the median-split group estimates the generating values.
  Censoring is administrative (data cut), independent of the group.
- ln(lesion AD) = μ + u_patient + v_lesion + slope·(cycle − 1) + ε.

References
----------
Hebert et al., J Nucl Med 2024;65:923–930, Tables 2, 4, 5, 6, Figs 3, 4, 6.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy import stats

from theranode.dosimetry.cohort.data import Analyte, CohortData, DoseKind
from theranode.dosimetry.cohort.results import LesionIndex

logger = logging.getLogger(__name__)

DAYS_PER_MONTH = 365.25 / 12.0
PAPER_PATIENTS = 35
PAPER_LESIONS = 146
CYCLE_COUNT_SHARES = {2: 2 / 35, 3: 3 / 35, 4: 30 / 35}
LESION_SITES = ("liver", "lymph_node", "mesentery", "pancreas", "peritoneum")
LESION_SITE_SHARES = (0.65, 0.25, 0.04, 0.04, 0.02)
ACCRUAL_START = np.datetime64("2016-01-04")
ACCRUAL_END = np.datetime64("2022-06-30")
DATA_CUT = np.datetime64("2023-06-30")
#: Months after the first injection without events, so that every patient completes
#: therapy and the month-3 CT; hazards are 0 (in both groups) before, constant after,
#: which keeps them proportional.
EVENT_FREE_MONTHS = 10.0
#: Response noise is normal truncated symmetrically at this many SDs (mean stays 0), so that
#: with total AD ≤ ``max_total_gy`` no lesion reaches ΔV% = −100 and no clipping biases
#: the linear dose–response.
TRUNCATION_SD = 2.4

#: Organ name → (median AD per cycle Gy, log-SD between patients, log trend per cycle,
#: loading on the shared uptake factor).
ORGAN_MODELS = {
    "liver": (1.08, 0.55, 0.0, 0.0),
    "spleen": (3.42, 0.22, 0.059, 0.15),
    "kidneys": (2.73, 0.22, 0.0, 0.05),
    "bone_marrow": (0.29, 0.30, 0.0, 0.25),
}

#: SD (%) of a post-injection laboratory value around its expected change (blood counts;
#: haemoglobin and creatinine vary less).
LAB_NOISE_PCT = 15.0
LAB_NOISE_PCT_BY_ANALYTE = {Analyte.HGB: 5.0, Analyte.CREAT: 8.0}
#: Analyte → (baseline mean, baseline SD, LLN M, LLN F, ULN, % change per Gy marrow CumAD,
#: % change at the end of therapy independent of dose, decimals). Canonical units.
LAB_MODELS: dict[Analyte, tuple[float, float, float, float, float, float, float, int]] = {
    Analyte.HGB: (13.4, 1.3, 13.0, 12.0, 17.0, -4.0, -4.0, 1),
    Analyte.WBC: (6.5, 2.0, 4.0, 4.0, 10.0, -24.0, -12.0, 2),
    Analyte.LYMPH: (1.5, 0.5, 1.0, 1.0, 4.0, -30.0, -15.0, 2),
    Analyte.NEUT: (4.0, 1.4, 1.8, 1.8, 7.5, -23.0, -8.0, 2),
    Analyte.PLT: (218.0, 68.0, 150.0, 150.0, 400.0, -37.0, 10.0, 0),
    Analyte.CREAT: (0.95, 0.18, 0.7, 0.5, 1.2, 0.0, 0.0, 2),
}


@dataclass(frozen=True)
class SurvivalTruth:
    """Generating survival model for one split index."""

    split_index: LesionIndex
    hazard_ratio_os: float
    hazard_ratio_pfs: float
    median_os_low_months: float
    median_pfs_low_months: float


#: The paper's hazard ratios (high vs low) and the low-group medians.
PAPER_SURVIVAL = {
    LesionIndex.MIN: SurvivalTruth(LesionIndex.MIN, 0.23, 0.34, 26.6, 23.6),
    LesionIndex.MEAN: SurvivalTruth(LesionIndex.MEAN, 0.34, 0.39, 30.0, 23.6),
}


@dataclass(frozen=True)
class SyntheticTruth:
    """The generating parameters a fit should recover."""

    survival: SurvivalTruth
    dose_response_intercept_pct: float
    dose_response_slope_pct_per_gy: float
    patient_sd_pct: float
    residual_sd_pct: float
    lesion_log_slope_per_cycle: float

    @property
    def tcp_d50_gy(self) -> float:
        """Total AD at which half the lesions are controlled (ΔV% ≤ 0)."""
        return -self.dose_response_intercept_pct / self.dose_response_slope_pct_per_gy


@dataclass(frozen=True)
class SyntheticCohort:
    """Generated data and the truth behind it."""

    data: CohortData
    truth: SyntheticTruth


@dataclass(frozen=True)
class SyntheticSettings:
    """Tunable generating parameters (defaults: the paper)."""

    lesion_median_cycle1_gy: float = 30.5
    lesion_patient_log_sd: float = 0.35
    lesion_lesion_log_sd: float = 0.30
    lesion_cycle_log_sd: float = 0.15
    lesion_log_slope_per_cycle: float = float(np.log(18.74 / 31.99) / 3.0)
    dose_response_intercept_pct: float = 8.0
    dose_response_slope_pct_per_gy: float = -0.20
    patient_sd_pct: float = 7.0
    residual_sd_pct: float = 10.0
    max_total_gy: float = 300.0
    lesions_per_patient: float = PAPER_LESIONS / PAPER_PATIENTS


def synthetic_cohort(
    n_patients: int = PAPER_PATIENTS,
    seed: int = 0,
    split_index: LesionIndex = LesionIndex.MIN,
    settings: SyntheticSettings = SyntheticSettings(),
) -> SyntheticCohort:
    """Generate a cohort of ``n_patients`` with known generating parameters.

    Parameters
    ----------
    n_patients
        Number of patients (≥ 2).
    seed
        Seed of the random generator: the same seed gives the same cohort.
    split_index
        Lesion index whose median split drives survival (mean or min).
    settings
        Dose and response model parameters.
    """
    if n_patients < 2:
        raise ValueError(f"A cohort needs at least 2 patients; got {n_patients}.")
    if split_index not in PAPER_SURVIVAL:
        raise ValueError(f"split_index must be mean or min; got {split_index.value}.")
    rng = np.random.default_rng(seed)
    patients = _patients(rng, n_patients)
    cycles = _cycles(rng, patients)
    lesions = _lesions(rng, patients, settings)
    lesion_dose_rows = _lesion_doses(rng, lesions, cycles, settings)
    organ_dose_rows, marrow_cum = _organ_doses(rng, cycles)
    totals = lesion_dose_rows.groupby(["patient_id", "voi"])["ad_gy"].sum()
    lesions = _responses(rng, lesions, totals, cycles, settings)
    truth_survival = PAPER_SURVIVAL[split_index]
    patients = _survival(rng, patients, totals, truth_survival)
    patients["recist_m3"] = _recist(lesions, patients["patient_id"])
    labs = _labs(rng, patients, cycles, marrow_cum)
    doses = pd.concat([lesion_dose_rows, organ_dose_rows], ignore_index=True)
    data = CohortData.from_frames(
        patients=patients, cycles=cycles, lesions=lesions, labs=labs, doses=doses
    )
    truth = SyntheticTruth(
        survival=truth_survival,
        dose_response_intercept_pct=settings.dose_response_intercept_pct,
        dose_response_slope_pct_per_gy=settings.dose_response_slope_pct_per_gy,
        patient_sd_pct=settings.patient_sd_pct,
        residual_sd_pct=settings.residual_sd_pct,
        lesion_log_slope_per_cycle=settings.lesion_log_slope_per_cycle,
    )
    logger.debug("Synthetic cohort: %d patients, %d lesions", n_patients, len(lesions))
    return SyntheticCohort(data=data, truth=truth)


def _days(values: npt.ArrayLike) -> npt.NDArray[np.timedelta64]:
    return np.round(np.asarray(values, dtype=float)).astype("timedelta64[D]")


def _patients(rng: np.random.Generator, n: int) -> pd.DataFrame:
    span_days = int((ACCRUAL_END - ACCRUAL_START).astype(int))
    first = ACCRUAL_START + _days(rng.uniform(0, span_days, n))
    return pd.DataFrame(
        {
            "patient_id": [f"SYN{i + 1:05d}" for i in range(n)],
            "sex": np.where(rng.random(n) < 18 / 35, "M", "F"),
            "age_at_start_y": np.round(np.clip(rng.normal(66.0, 9.0, n), 35, 88), 1),
            "first_injection_date": first,
        }
    )


def _cycle_counts(rng: np.random.Generator, n: int) -> npt.NDArray[np.int64]:
    counts = [int(round(share * n)) for share in CYCLE_COUNT_SHARES.values()]
    counts[-1] = n - sum(counts[:-1])
    values = np.repeat(list(CYCLE_COUNT_SHARES), counts)
    return np.asarray(rng.permutation(values), dtype=np.int64)


def _cycles(rng: np.random.Generator, patients: pd.DataFrame) -> pd.DataFrame:
    n_cycles = _cycle_counts(rng, len(patients))
    ids = np.repeat(patients["patient_id"].to_numpy(), n_cycles)
    first = np.repeat(patients["first_injection_date"].to_numpy(), n_cycles)
    cycle = np.concatenate([np.arange(1, k + 1) for k in n_cycles])
    jitter = np.where(cycle == 1, 0.0, rng.normal(0.0, 3.0, cycle.size))
    admin = first + _days(56.0 * (cycle - 1) + jitter)
    activity = np.round(rng.normal(7.4, 0.08, cycle.size), 2)
    return pd.DataFrame(
        {"patient_id": ids, "cycle": cycle, "admin_date": admin, "activity_gbq": activity}
    )


def _lesion_counts(rng: np.random.Generator, n: int, mean: float) -> npt.NDArray[np.int64]:
    counts = np.clip(1 + rng.poisson(mean - 1.0, n), 1, 9)
    target = int(round(mean * n))
    while counts.sum() != target:
        step = 1 if counts.sum() < target else -1
        movable = np.flatnonzero((counts < 9) if step > 0 else (counts > 1))
        counts[rng.choice(movable)] += step
    return counts


def _lesions(
    rng: np.random.Generator, patients: pd.DataFrame, settings: SyntheticSettings
) -> pd.DataFrame:
    counts = _lesion_counts(rng, len(patients), settings.lesions_per_patient)
    ids = np.repeat(patients["patient_id"].to_numpy(), counts)
    first = np.repeat(patients["first_injection_date"].to_numpy(), counts)
    sites = rng.choice(np.array(LESION_SITES), size=ids.size, p=LESION_SITE_SHARES)
    order = np.concatenate([np.arange(1, k + 1) for k in counts])
    names = [f"{site}_{i}" for site, i in zip(sites, order, strict=True)]
    volume = np.round(2.0 + rng.lognormal(np.log(6.0), 0.9, ids.size), 2)
    return pd.DataFrame(
        {
            "patient_id": ids,
            "lesion_id": names,
            "site": sites,
            "vol_bl_cm3": volume,
            "ct_bl_date": first - _days(rng.uniform(7, 40, ids.size)),
        }
    )


def _lesion_doses(
    rng: np.random.Generator,
    lesions: pd.DataFrame,
    cycles: pd.DataFrame,
    settings: SyntheticSettings,
) -> pd.DataFrame:
    patient_ids = lesions["patient_id"].to_numpy()
    unique_ids, patient_index = np.unique(patient_ids, return_inverse=True)
    patient_effect = rng.normal(0.0, settings.lesion_patient_log_sd, unique_ids.size)[patient_index]
    n_cycles = cycles.groupby("patient_id")["cycle"].max().reindex(patient_ids).to_numpy()
    repeat = np.asarray(n_cycles, dtype=np.int64)
    cycle = np.concatenate([np.arange(1, k + 1) for k in repeat])
    owner = np.repeat(np.arange(len(lesions)), repeat)
    log_ad = np.empty(cycle.size)
    redraw = np.ones(len(lesions), dtype=bool)
    for _ in range(1000):
        lesion_log = np.log(settings.lesion_median_cycle1_gy) + patient_effect[redraw]
        lesion_log = lesion_log + rng.normal(0.0, settings.lesion_lesion_log_sd, int(redraw.sum()))
        rows = redraw[owner]
        log_ad[rows] = np.repeat(lesion_log, repeat[redraw])
        log_ad[rows] += settings.lesion_log_slope_per_cycle * (cycle[rows] - 1)
        log_ad[rows] += rng.normal(0.0, settings.lesion_cycle_log_sd, int(rows.sum()))
        totals = np.bincount(owner, weights=np.round(np.exp(log_ad), 3), minlength=len(lesions))
        redraw = totals > settings.max_total_gy
        if not redraw.any():
            break
    return pd.DataFrame(
        {
            "patient_id": np.repeat(patient_ids, repeat),
            "cycle": cycle,
            "voi": np.repeat(lesions["lesion_id"].to_numpy(), repeat),
            "kind": DoseKind.LESION.value,
            "ad_gy": np.round(np.exp(log_ad), 3),
        }
    )


def _organ_doses(rng: np.random.Generator, cycles: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    patient_ids = cycles["patient_id"].to_numpy()
    unique_ids, index = np.unique(patient_ids, return_inverse=True)
    uptake = rng.normal(0.0, 1.0, unique_ids.size)
    frames = []
    for organ, (median, log_sd, trend, loading) in ORGAN_MODELS.items():
        patient_log = np.log(median) + rng.normal(0.0, log_sd, unique_ids.size) + loading * uptake
        cycle = cycles["cycle"].to_numpy()
        log_ad = patient_log[index] + trend * (cycle - 1) + rng.normal(0.0, 0.12, cycle.size)
        frames.append(
            pd.DataFrame(
                {
                    "patient_id": patient_ids,
                    "cycle": cycle,
                    "voi": organ,
                    "kind": DoseKind.ORGAN.value,
                    "ad_gy": np.round(np.exp(log_ad), 3),
                }
            )
        )
    organs = pd.concat(frames, ignore_index=True)
    marrow = organs.loc[organs["voi"] == "bone_marrow"].sort_values(["patient_id", "cycle"])
    marrow_cum = marrow.groupby("patient_id")["ad_gy"].cumsum()
    marrow_cum.index = pd.MultiIndex.from_frame(marrow[["patient_id", "cycle"]])
    return organs, marrow_cum


def _responses(
    rng: np.random.Generator,
    lesions: pd.DataFrame,
    totals: pd.Series,
    cycles: pd.DataFrame,
    settings: SyntheticSettings,
) -> pd.DataFrame:
    total = totals.reindex(
        pd.MultiIndex.from_frame(lesions[["patient_id", "lesion_id"]])
    ).to_numpy()
    unique_ids, index = np.unique(lesions["patient_id"].to_numpy(), return_inverse=True)
    patient_effect = _symmetric_normal(rng, settings.patient_sd_pct, unique_ids.size)[index]
    delta_pct = (
        settings.dose_response_intercept_pct
        + settings.dose_response_slope_pct_per_gy * total
        + patient_effect
        + _symmetric_normal(rng, settings.residual_sd_pct, len(lesions))
    )
    if np.any(delta_pct <= -100.0):
        raise ValueError(
            "The response settings let a lesion vanish (ΔV% ≤ −100); lower the slope, the "
            "noise or max_total_gy."
        )
    last = (
        cycles.groupby("patient_id")["admin_date"].max().reindex(lesions["patient_id"]).to_numpy()
    )
    out = lesions.copy()
    out["vol_m3_cm3"] = np.round(out["vol_bl_cm3"].to_numpy() * (1.0 + delta_pct / 100.0), 4)
    out["ct_m3_date"] = last + _days(91.0 + rng.normal(0.0, 7.0, len(lesions)))
    return out


def _symmetric_normal(rng: np.random.Generator, sd: float, size: int) -> npt.NDArray[np.float64]:
    """Normal(0, sd) truncated at ± ``TRUNCATION_SD`` sd: still mean 0, bounded."""
    draws = stats.truncnorm.rvs(
        -TRUNCATION_SD, TRUNCATION_SD, scale=sd, size=size, random_state=rng
    )
    return np.asarray(draws, dtype=np.float64)


def _survival(
    rng: np.random.Generator, patients: pd.DataFrame, totals: pd.Series, truth: SurvivalTruth
) -> pd.DataFrame:
    per_patient = totals.groupby(level="patient_id")
    index = per_patient.mean() if truth.split_index is LesionIndex.MEAN else per_patient.min()
    index = index.reindex(patients["patient_id"]).to_numpy()
    high = index > np.median(index)
    rate_death = np.log(2.0) / (truth.median_os_low_months - EVENT_FREE_MONTHS)
    rate_pfs = np.log(2.0) / (truth.median_pfs_low_months - EVENT_FREE_MONTHS)
    rate_progression = rate_pfs - rate_death
    hr_progression = (truth.hazard_ratio_pfs * rate_pfs - truth.hazard_ratio_os * rate_death) / (
        rate_progression
    )
    n = len(patients)
    death_m = EVENT_FREE_MONTHS + rng.exponential(1.0, n) / (
        rate_death * np.where(high, truth.hazard_ratio_os, 1.0)
    )
    prog_m = EVENT_FREE_MONTHS + rng.exponential(1.0, n) / (
        rate_progression * np.where(high, hr_progression, 1.0)
    )
    first = patients["first_injection_date"].to_numpy().astype("datetime64[D]")
    death = first + _days(death_m * DAYS_PER_MONTH)
    progression = first + _days(prog_m * DAYS_PER_MONTH)
    dies = death <= DATA_CUT
    progresses = (progression < death) & (progression <= DATA_CUT)
    out = patients.copy()
    out["progression_date"] = np.where(progresses, progression, np.datetime64("NaT"))
    out["death_date"] = np.where(dies, death, np.datetime64("NaT"))
    out["last_followup_date"] = np.where(dies, death, DATA_CUT)
    return out


def _recist(lesions: pd.DataFrame, patient_ids: pd.Series) -> list[str]:
    change = 100.0 * (lesions["vol_m3_cm3"] - lesions["vol_bl_cm3"]) / lesions["vol_bl_cm3"]
    mean_change = change.groupby(lesions["patient_id"]).mean().reindex(patient_ids).to_numpy()
    return list(np.where(mean_change <= -30.0, "PR", np.where(mean_change >= 20.0, "PD", "SD")))


def _labs(
    rng: np.random.Generator, patients: pd.DataFrame, cycles: pd.DataFrame, marrow_cum: pd.Series
) -> pd.DataFrame:
    last = cycles.groupby("patient_id")["admin_date"].max().reindex(patients["patient_id"])
    n_cycles = cycles.groupby("patient_id")["cycle"].max().reindex(patients["patient_id"])
    marrow_total = marrow_cum.groupby(level="patient_id").max().reindex(patients["patient_id"])
    n = len(patients)
    base_dates = patients["first_injection_date"].to_numpy() - _days(rng.uniform(1, 20, n))
    m3_dates = last.to_numpy() + _days(91.0 + rng.normal(0, 7, n))
    m12_dates = last.to_numpy() + _days(365.0 + rng.normal(0, 20, n))
    end_of_follow_up = patients["last_followup_date"].to_numpy()
    visits = [
        (base_dates, np.zeros(n), np.zeros(n), np.ones(n, bool)),
        (m3_dates, marrow_total.to_numpy(), np.ones(n), m3_dates <= end_of_follow_up),
        (m12_dates, 0.6 * marrow_total.to_numpy(), np.full(n, 0.6), m12_dates <= end_of_follow_up),
    ]
    during = cycles.assign(
        cum=marrow_cum.reindex(pd.MultiIndex.from_frame(cycles[["patient_id", "cycle"]])).to_numpy()
    )
    order = pd.Index(patients["patient_id"]).get_indexer(during["patient_id"])
    fraction = during["cycle"].to_numpy() / n_cycles.to_numpy()[order]
    cycle_visit = (
        during["admin_date"].to_numpy() + _days(15.0 + rng.normal(0, 2, len(during))),
        during["cum"].to_numpy(),
        fraction,
        np.ones(len(during), bool),
    )
    return _lab_rows(rng, patients, visits, cycle_visit, order)


#: A laboratory visit: dates, marrow cumulative AD (Gy), fraction of therapy, kept mask.
_Visit = tuple[
    npt.NDArray[Any], npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.bool_]
]


def _lab_rows(
    rng: np.random.Generator,
    patients: pd.DataFrame,
    visits: list[_Visit],
    cycle_visit: _Visit,
    cycle_order: npt.NDArray[np.int64],
) -> pd.DataFrame:
    n = len(patients)
    male = patients["sex"].to_numpy() == "M"
    frames = []
    for analyte, (mean, sd, lln_m, lln_f, uln, per_gy, offset, decimals) in LAB_MODELS.items():
        log_sd = np.sqrt(np.log1p((sd / mean) ** 2))
        baseline = mean * np.exp(rng.normal(-0.5 * log_sd**2, log_sd, n))
        lln = np.where(male, lln_m, lln_f)
        noise_pct = LAB_NOISE_PCT_BY_ANALYTE.get(analyte, LAB_NOISE_PCT)
        all_visits = [*visits, cycle_visit]
        for number, (dates, marrow_gy, fraction, keep) in enumerate(all_visits):
            rows = cycle_order if number == len(visits) else np.arange(n)
            change = (
                per_gy * marrow_gy
                + offset * fraction
                + rng.normal(0, noise_pct, rows.size) * (fraction > 0)
            )
            value = baseline[rows] * np.maximum(1.0 + change / 100.0, 0.05)
            frames.append(
                pd.DataFrame(
                    {
                        "patient_id": patients["patient_id"].to_numpy()[rows][keep],
                        "date": dates[keep],
                        "analyte": analyte.value,
                        "value": np.round(value[keep], decimals),
                        "lln": lln[rows][keep],
                        "uln": uln,
                    }
                )
            )
    return pd.concat(frames, ignore_index=True)
