"""Training data: checks and nnU-Net raw dataset layout."""
