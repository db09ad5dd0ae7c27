"""steplabel: step-labelled reasoning data for process reward models."""
__version__ = "0.1.0"
