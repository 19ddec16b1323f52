"""A Lightning script, no unstuck callback, Adam at an LR 100x too low:
`unstuck run examples/lightning_low_lr.py` (docs/run.md).
"""

import lightning as L  # noqa: N812  (the name Lightning's own docs use)
import torch
from torch.utils.data import DataLoader, TensorDataset


class Net(L.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)
        )

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-5)


torch.manual_seed(0)
x = torch.randn(4096, 16)
y = (x @ torch.randn(16, 4)).argmax(dim=1)
trainer = L.Trainer(
    accelerator="cpu",
    max_steps=300,
    logger=False,
    enable_checkpointing=False,
    enable_progress_bar=False,
    enable_model_summary=False,
)
trainer.fit(Net(), DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True))
print("lightning done", flush=True)
