"""Receiving: the DICOM listener, what happens to each instance, the archive."""
