"""The device side: timing statistics, the host timing lock, the latency agent. No torch."""
