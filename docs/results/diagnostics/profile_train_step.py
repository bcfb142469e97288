"""Where a tiny-model training step spends its time (torch profiler, one thread).

    python docs/results/diagnostics/profile_train_step.py \
        echostream/pretrained/echostream-tiny-fr-en/model.pt

7 training utterances of work/synth-demo, forward + backward + Adam, 3 profiled steps after one
warm-up; the unit decoder's attention dropout is set to 0 as in configs/fr-en/*_tiny.yaml.
"""

import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

from echostream.data.sampler import S2STDataset, collate
from echostream.models.checkpoint import load_checkpoint

DATA = "work/synth-demo"

torch.set_num_threads(1)
model, _ = load_checkpoint(sys.argv[1])
model.train()
for layer in model.unit_decoder.layers:
    layer.self_attn.dropout = layer.encoder_attn.dropout = 0.0
data = S2STDataset(
    f"{DATA}/train.tsv",
    model.src_tokenizer,
    model.tgt_tokenizer,
    feature_dir=f"{DATA}/fbank/train",
    num_units=model.cfg.vocab.num_units,
)
batch = collate([data[i] for i in range(100, 107)])
opt = torch.optim.Adam(model.parameters(), lr=1e-4)


def step() -> None:
    opt.zero_grad()
    model(batch)["total"].backward()
    opt.step()


step()
with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
    t0 = time.time()
    for _ in range(3):
        step()
    print(f"fbank {tuple(batch['fbank'].shape)}: {(time.time() - t0) / 3:.2f} s per step")
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))
