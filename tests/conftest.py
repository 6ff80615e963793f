import torch

# Test tensors are tiny: one thread avoids oversubscribing the 2 cores (and spin-waits).
torch.set_num_threads(1)
