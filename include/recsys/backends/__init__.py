"""The compute seam: what fits a model and produces the factors every later stage uses."""
