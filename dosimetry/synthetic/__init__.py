"""Synthetic phantoms with known answers, for tests, benchmarks and the demo."""
