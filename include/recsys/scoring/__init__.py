"""Top-N scoring: the model bundle, the blocked top-k kernels, seen filtering, popularity
fallbacks and baselines, business rules, similar items and A/B variants."""
