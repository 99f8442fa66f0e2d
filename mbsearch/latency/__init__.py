"""Latency of a network on a target: local and remote targets, the cache, the lookup table."""
