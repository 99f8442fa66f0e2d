"""What a network is: architectures, search spaces, sampling, the reference MobileNets, timm block strings. No torch."""
