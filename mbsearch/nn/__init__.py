"""Arch -> torch: blocks, the model builder, cost counting, ONNX export."""
