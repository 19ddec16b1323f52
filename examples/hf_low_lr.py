"""An HF Trainer script, no unstuck callback, an LR 100x too low:
`unstuck run examples/hf_low_lr.py` (docs/run.md).
"""

import torch
from transformers import Trainer, TrainingArguments


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)
        )

    def forward(self, x, labels=None):
        logits = self.net(x)
        return {"loss": torch.nn.functional.cross_entropy(logits, labels), "logits": logits}


class Data(torch.utils.data.Dataset):
    def __init__(self):
        torch.manual_seed(0)
        self.x = torch.randn(4096, 16)
        self.y = (self.x @ torch.randn(16, 4)).argmax(dim=1)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.y[i]}


args = TrainingArguments(
    output_dir="out",
    max_steps=300,
    per_device_train_batch_size=32,
    learning_rate=1e-5,
    lr_scheduler_type="constant",
    report_to=[],
    save_strategy="no",
    logging_steps=1000,
    use_cpu=True,
    disable_tqdm=True,
)
Trainer(model=Net(), args=args, train_dataset=Data()).train()
print("hf done", flush=True)
