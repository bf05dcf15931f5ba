"""The models folder: finding, installing and checking nnU-Net models; known releases."""
