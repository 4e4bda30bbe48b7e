"""The codec: layers, quantizers, the DAC-style encoder/decoder, discriminators, the serving
copy and checkpoints. Audio tensors are ``[B, 1, T]`` float32 at the model's sample rate."""
