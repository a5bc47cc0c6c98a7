"""Pure tensor code of the algorithm: no I/O, no paths, explicit ``torch.Generator``s."""
