"""Planning: grouping series into cycles, completion rules, job submission."""
