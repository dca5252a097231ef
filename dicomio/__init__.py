"""DICOM to domain types and back: readers, RT Dose and SR writers, phantoms."""
