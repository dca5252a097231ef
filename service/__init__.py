"""The theranode DICOM node: network, archive, index, jobs and scheduling.

How the subpackages feed each other is described in :mod:`theranode.service.app`.
"""
