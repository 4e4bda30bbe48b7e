"""Training: params, data, losses, runtime (device, precision, DDP, RNG), the loop, the train stage."""
