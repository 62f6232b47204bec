"""Hyperparameter search on a validation split carved from the training period."""
