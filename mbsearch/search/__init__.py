"""The search: objective, loop, rungs, workers and progress."""
