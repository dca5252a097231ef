"""Cohort statistics: outcome import, cohort data loading, the report and its schedule."""
