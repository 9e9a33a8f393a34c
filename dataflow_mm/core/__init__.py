"""The operator contract: the base class, its keys, parameters, calls and step results."""
