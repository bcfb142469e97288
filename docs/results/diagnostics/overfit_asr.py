"""Can the encoder fit ASR CTC on 16 real training utterances (no augmentation)?

    git show 72281f2:echostream/pretrained/echostream-tiny-fr-en/model.pt > /tmp/update600.pt
    python docs/results/diagnostics/overfit_asr.py /tmp/update600.pt [STEPS=101]

Full-batch Adam (lr 1e-3, clip 1.0) on the first 16 utterances of work/synth-demo/train.tsv,
the model's own loss with every weight but ASR CTC's set to 0; prints the ASR CTC every 25
steps. (72281f2 holds the update-600 weights that docs/results.md reports this for.)
"""

import sys
import time

import torch

from echostream.data.sampler import S2STDataset, collate
from echostream.models.checkpoint import load_checkpoint

DATA = "work/synth-demo"

torch.set_num_threads(1)
torch.manual_seed(0)
model, _ = load_checkpoint(sys.argv[1])
model.train()
loss_cfg = model.cfg.loss
loss_cfg.mt_ce_weight = loss_cfg.st_ctc_weight = loss_cfg.unit_ctc_weight = 0.0
data = S2STDataset(
    f"{DATA}/train.tsv",
    model.src_tokenizer,
    model.tgt_tokenizer,
    feature_dir=f"{DATA}/fbank/train",
    num_units=model.cfg.vocab.num_units,
)
batch = collate([data[i] for i in range(16)])
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
t0 = time.time()
for step in range(int(sys.argv[2]) if len(sys.argv) > 2 else 101):
    losses = model(batch)
    loss = losses["asr_ctc"]
    opt.zero_grad()
    losses["total"].backward()  # = asr_ctc_weight x ASR CTC
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    if step % 25 == 0:
        print(f"step {step}: ASR CTC {loss.item():.3f} ({time.time() - t0:.0f} s)", flush=True)
