"""Data and training: datasets, the training loop, one candidate's evaluation, full training."""
