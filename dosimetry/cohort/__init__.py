"""Cohort outcome statistics: the dose–effect analyses of Hebert et al. 2024.

Pure computation on tables (pandas data frames) of patients, cycles,
lesions, laboratory values and absorbed doses; every analysis returns a
frozen dataclass, or :class:`~theranode.dosimetry.cohort.results.NotEstimable` with the
reason when the data are too few. Nothing here reads files or databases: the
service builds a :class:`~theranode.dosimetry.cohort.data.CohortData` record and hands
it to :func:`~theranode.dosimetry.cohort.analysis.analyse_cohort`.

Rooms: ``data`` (the input record), ``ctcae`` (CTCAE v4.03 grades, CKD-EPI),
``labs`` (Tables 3 and 4), ``distributions`` (Tables 5 and 6), ``trend``
(absorbed dose across cycles), ``response`` (Figs 3 and 4), ``toxicity``
(Fig 5), ``survival`` (Fig 6),
``results`` (records), ``analysis`` (all of it at once).

References
----------
Hebert K, Santoro L, Monnier M, et al. Absorbed dose–response relationship in
patients with gastroenteropancreatic neuroendocrine tumors treated with
[177Lu]Lu-DOTATATE. J Nucl Med 2024;65:923–930.
"""
