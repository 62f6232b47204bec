"""Offline evaluation: ranking and beyond-accuracy metrics, paired bootstrap, slices."""
