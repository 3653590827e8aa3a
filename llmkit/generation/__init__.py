"""Generating text: multi-turn chat sessions, fast greedy decoding, speed benchmarks."""
