"""Decoding: batched greedy generation, the CPU attention paths, the result cache, model loading."""
