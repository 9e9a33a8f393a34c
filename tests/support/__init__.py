"""Test helpers, not shipped in the wheel: a fake serving, a fake OpenAI-compatible server, sample and bad-input tables.

Tests and benchmarks import them as ``tests.support`` from the repository root (pytest's ``pythonpath``).
"""
