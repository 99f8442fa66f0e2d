"""What a study found: the front, re-timing, verification, baselines, export."""
