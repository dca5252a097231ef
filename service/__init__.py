"""The theranode DICOM node: network, archive, index, jobs and scheduling."""

__version__ = "0.1.0"
