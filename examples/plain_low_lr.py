"""A plain PyTorch loop with Adam at an LR 100x too low: `unstuck run examples/plain_low_lr.py`.

Nothing in it mentions unstuck; `unstuck run` watches it as it is (docs/run.md).
Usage: python examples/plain_low_lr.py [EXIT_STATUS]
"""

import sys

import torch

torch.manual_seed(0)
x = torch.randn(2048, 16)
y = (x @ torch.randn(16, 4)).argmax(dim=1)
model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)
g = torch.Generator().manual_seed(1)
for _ in range(300):
    idx = torch.randint(0, len(x), (64,), generator=g)
    loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
print("script done", flush=True)
sys.exit(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
