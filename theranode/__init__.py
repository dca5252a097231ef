"""theranode: automatic post-treatment dosimetry for [177Lu]Lu-DOTATATE PRRT.

The installed package has one import name, ``theranode``; its subpackages are
the repository's top-level folders, mapped by ``[tool.setuptools.package-dir]``
in ``pyproject.toml``:

- :mod:`theranode.dosimetry` — pure computation on arrays and plain records;
- :mod:`theranode.dicomio` — DICOM to volumes and metadata, results to DICOM;
- :mod:`theranode.service` — the node: network, archive, database, jobs;
- :mod:`theranode.config` — the configuration schema and shipped defaults.

Imports run one way only: ``dosimetry`` ← ``dicomio`` ← ``service``.
"""

__version__ = "0.1.0"
