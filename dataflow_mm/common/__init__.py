"""The foundation every layer may import: errors, logging, optional dependencies, retries, secrets, value checks."""
