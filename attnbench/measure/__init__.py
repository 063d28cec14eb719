"""Measurements of one call: timing, correctness and memory."""
