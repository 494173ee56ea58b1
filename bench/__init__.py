"""`make bench`: the hub against the simulated upstream (and the LiteLLM proxy), one table per run."""
