"""Records of what decoding did, and (later) profiling, traces, replay and the cost model."""
