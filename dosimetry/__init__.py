"""Pure dosimetry computation for [177Lu]Lu-DOTATATE PRRT.

Nothing in this package reads DICOM, touches the network, a database or files:
it takes :class:`~theranode.dosimetry.volume.Volume` objects and plain dataclasses and
returns dataclasses.
"""
