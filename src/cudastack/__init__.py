"""cudastack: benchmark PyTorch across pinned CUDA / cuDNN / PyTorch stacks."""

__version__ = "0.1.0"
