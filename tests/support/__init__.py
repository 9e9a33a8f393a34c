"""Test helpers: tiny random-weight models of the real architectures, built offline."""
