#!/usr/bin/env python3
"""PyTorch reference for ailla: the same architecture, loaded from ailla's safetensors checkpoints.

Two uses, neither required by CI:
  eval CKPT --ids FILE          mean cross-entropy of a token-id stream, windowed exactly as `ailla eval`
  bench --config-json JSON      training and evaluation tokens/s of PyTorch eager on the same model

The checkpoint layout: row-major float32 tensors with y = x @ W (W is [in, out]), names
tok_emb, pos_emb, layers.{l}.{ln1,ln2}.{weight,bias}, layers.{l}.attn.{wq,wk,wv,wo}[.bias],
layers.{l}.mlp.{w1,b1,w2,b2}, ln_f.{weight,bias}, head (when untied); the model config and vocabulary
as JSON in the `ailla` metadata entry.
"""
import argparse
import json
import math
import struct
import sys
import time

import torch
import torch.nn.functional as F


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])
    base = 8 + header_len
    meta = header.pop("__metadata__", {})
    tensors = {}
    for name, info in header.items():
        assert info["dtype"] == "F32", name
        start, end = info["data_offsets"]
        buf = bytearray(data[base + start : base + end])
        tensors[name] = torch.frombuffer(buf, dtype=torch.float32).reshape(info["shape"]).clone()
    return tensors, json.loads(meta["ailla"])


class Model(torch.nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        d, ff, v = config["d_model"], config["d_ff"], config["vocab_size"]
        P = lambda *shape: torch.nn.Parameter(torch.randn(*shape) * 0.02)
        self.tok_emb = P(v, d)
        self.pos_emb = P(config["ctx_len"], d)
        self.layers = torch.nn.ModuleList()
        for _ in range(config["n_layers"]):
            layer = torch.nn.ParameterDict(
                {
                    "ln1_weight": torch.nn.Parameter(torch.ones(d)),
                    "ln1_bias": torch.nn.Parameter(torch.zeros(d)),
                    "wq": P(d, d), "bq": torch.nn.Parameter(torch.zeros(d)),
                    "wk": P(d, d), "bk": torch.nn.Parameter(torch.zeros(d)),
                    "wv": P(d, d), "bv": torch.nn.Parameter(torch.zeros(d)),
                    "wo": P(d, d), "bo": torch.nn.Parameter(torch.zeros(d)),
                    "ln2_weight": torch.nn.Parameter(torch.ones(d)),
                    "ln2_bias": torch.nn.Parameter(torch.zeros(d)),
                    "w1": P(d, ff), "b1": torch.nn.Parameter(torch.zeros(ff)),
                    "w2": P(ff, d), "b2": torch.nn.Parameter(torch.zeros(d)),
                }
            )
            self.layers.append(layer)
        self.ln_f_weight = torch.nn.Parameter(torch.ones(d))
        self.ln_f_bias = torch.nn.Parameter(torch.zeros(d))
        self.head = None if config["tied"] else P(d, v)

    def load_ailla(self, tensors):
        names = {
            "ln1_weight": "ln1.weight", "ln1_bias": "ln1.bias",
            "wq": "attn.wq", "bq": "attn.wq.bias", "wk": "attn.wk", "bk": "attn.wk.bias",
            "wv": "attn.wv", "bv": "attn.wv.bias", "wo": "attn.wo", "bo": "attn.wo.bias",
            "ln2_weight": "ln2.weight", "ln2_bias": "ln2.bias",
            "w1": "mlp.w1", "b1": "mlp.b1", "w2": "mlp.w2", "b2": "mlp.b2",
        }
        with torch.no_grad():
            self.tok_emb.copy_(tensors["tok_emb"])
            self.pos_emb.copy_(tensors["pos_emb"])
            for l, layer in enumerate(self.layers):
                for key, name in names.items():
                    layer[key].copy_(tensors[f"layers.{l}.{name}"])
            self.ln_f_weight.copy_(tensors["ln_f.weight"])
            self.ln_f_bias.copy_(tensors["ln_f.bias"])
            if self.head is not None:
                self.head.copy_(tensors["head"])

    def forward(self, idx):  # idx (B, T)
        c = self.config
        B, T = idx.shape
        H, eps = c["n_heads"], c["ln_eps"]
        d = c["d_model"]
        x = self.tok_emb[idx] + self.pos_emb[:T]  # (B, T, d)
        for w in self.layers:
            z = F.layer_norm(x, (d,), w["ln1_weight"], w["ln1_bias"], eps)
            q = (z @ w["wq"] + w["bq"]).view(B, T, H, d // H).transpose(1, 2)  # (B, H, T, hs)
            k = (z @ w["wk"] + w["bk"]).view(B, T, H, d // H).transpose(1, 2)
            v = (z @ w["wv"] + w["bv"]).view(B, T, H, d // H).transpose(1, 2)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, hs)
            y = y.transpose(1, 2).reshape(B, T, d)
            h = x + y @ w["wo"] + w["bo"]
            z = F.layer_norm(h, (d,), w["ln2_weight"], w["ln2_bias"], eps)
            x = h + F.gelu(z @ w["w1"] + w["b1"], approximate="tanh") @ w["w2"] + w["b2"]
        x = F.layer_norm(x, (d,), self.ln_f_weight, self.ln_f_bias, eps)
        out = self.tok_emb.t() if self.head is None else self.head
        return x @ out  # (B, T, V)


def windows(ids, ctx, batch):
    """Non-overlapping windows, `batch` at a time, the short last one alone: as `ailla eval`."""
    predicted = len(ids) - 1
    full = predicted // ctx
    w = 0
    while w < full:
        n = min(batch, full - w)
        yield [ids[(w + i) * ctx : (w + i) * ctx + ctx + 1] for i in range(n)]
        w += n
    rest = predicted - full * ctx
    if rest:
        yield [ids[full * ctx : full * ctx + rest + 1]]


def cmd_eval(args):
    tensors, meta = read_safetensors(args.checkpoint)
    model = Model(meta["config"])
    model.load_ailla(tensors)
    ids = [int(t) for t in open(args.ids).read().split()]
    total, count = 0.0, 0
    with torch.no_grad():
        for group in windows(ids, meta["config"]["ctx_len"], args.batch_size):
            seq = torch.tensor(group)
            logits = model(seq[:, :-1])
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), seq[:, 1:].reshape(-1), reduction="sum")
            total += loss.item()
            count += seq[:, 1:].numel()
    print(json.dumps({"tokens": count, "mean_ce_nats": total / count, "torch_version": torch.__version__}))


def cmd_bench(args):
    torch.set_num_threads(args.threads)
    c = json.loads(args.config_json)
    config = dict(c, ln_eps=1e-5, tied=True, gelu="tanh")
    torch.manual_seed(1)
    device = torch.device(args.device)
    # f32 products in f32, as ailla's cuBLAS calls are made (no TF32 tensor-core rounding)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model = Model(config).to(device)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=1e-4, betas=(0.9, 0.95),
    )
    B, T, V = c["batch_size"], c["ctx_len"], c["vocab_size"]
    idx = torch.randint(0, V, (B, T), device=device)
    tgt = torch.randint(0, V, (B, T), device=device)

    def synchronize():
        # GPU work is queued; a step's time is until it has run
        if device.type == "cuda":
            torch.cuda.synchronize()

    def train_step():
        logits = model(idx)
        loss = F.cross_entropy(logits.reshape(-1, V), tgt.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    def eval_step():
        with torch.no_grad():
            logits = model(idx)
            return F.cross_entropy(logits.reshape(-1, V), tgt.reshape(-1))

    def median_seconds(work):
        # the median, as `ailla bench` takes it: robust to a step slowed by another process
        times = []
        for _ in range(args.steps):
            start = time.perf_counter()
            work()
            synchronize()
            times.append(time.perf_counter() - start)
        return sorted(times)[len(times) // 2]

    train_step()
    train_s = median_seconds(train_step)
    eval_step()
    eval_s = median_seconds(eval_step)
    print(json.dumps({
        "name": c["name"], "threads": args.threads,
        "train_tokens_per_s": B * T / train_s, "eval_tokens_per_s": B * T / eval_s,
        "torch_version": torch.__version__,
    }))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    e = sub.add_parser("eval")
    e.add_argument("checkpoint")
    e.add_argument("--ids", required=True)
    e.add_argument("--batch-size", type=int, default=16)
    b = sub.add_parser("bench")
    b.add_argument("--config-json", required=True)
    b.add_argument("--steps", type=int, default=10)
    b.add_argument("--threads", type=int, default=1)
    b.add_argument("--device", default="cpu", help="cpu, or cuda for the GPU comparison of `ailla bench --device cuda`")
    args = parser.parse_args()
    {"eval": cmd_eval, "bench": cmd_bench}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
