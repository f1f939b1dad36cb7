"""Ways to draw samples of one scan besides a trained SinGAN: the training-free patch engine
(:mod:`medsingan.engines.patch`)."""
