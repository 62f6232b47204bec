"""The input side: reading the landed source window, the snapshot with integer codes, the
leak-free time split, and the synthetic data generator."""
