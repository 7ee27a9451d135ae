"""Files other projects publish: distilled-set formats (MTT, FRePo, KIP, DC/DSA/DM), the safe
reader of PyTorch `.pt`/`.pth` pickles and `.npz` archives, and reference-code ConvNet weights.
Readers bound what they allocate and name the file and field of anything malformed."""
