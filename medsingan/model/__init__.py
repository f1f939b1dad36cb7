"""SinGAN networks, the trained pyramid container and its safetensors serialization."""
