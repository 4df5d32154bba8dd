"""Side-by-side benchmarks: methods interleaved per prompt so machine noise hits all alike."""
