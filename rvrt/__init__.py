"""RVRT in plain PyTorch: the reference model of rvrt-deploy."""
