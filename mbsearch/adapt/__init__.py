"""NetAdapt: trimming a found network to a latency budget."""
