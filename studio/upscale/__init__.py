"""Upsampling: the Pixelsmith-style patch sampler and its bounded-memory tiles and files."""
