"""Jobs: the worker-process runner, job inputs, and the dosimetry pipeline."""
