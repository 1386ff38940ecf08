"""optim-workbench: PyTorch optimizers in several backends, and the harness that measures them."""

__version__ = "0.1.0"
