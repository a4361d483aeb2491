#!/usr/bin/env python3
"""Loads an `ailla export --format hf` directory with Hugging Face transformers and compares it with ailla.

    python3 tests/hf_export_check.py EXPORT_DIR TEXT_FILE EXPECTED_JSON

EXPECTED_JSON holds what ailla computed on TEXT_FILE: {"ids": [...], "nll_nats": [...]} with the
token ids of ailla's tokenizer and the per-token negative log-likelihood of every token after the first,
windowed as `ailla eval` windows (non-overlapping windows of the context, the shorter last one on its
own). The model runs in float64 so that the comparison measures ailla's float32 rounding, not torch's.

Exit status: 0 when the ids are equal and the mean per-token difference is within 1e-5 nats; 1 when
they are not; 77 (skipped) when torch or transformers is not installed.
"""

import json
import sys


def main() -> int:
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    export_dir, text_file, expected_file = sys.argv[1:]
    try:
        import torch
        from transformers import AutoTokenizer, GPT2LMHeadModel
    except ImportError as missing:
        print(f"skipped: {missing.name} is not installed (pip install torch transformers)")
        return 77
    with open(text_file, encoding="utf-8") as f:
        text = f.read()
    with open(expected_file, encoding="utf-8") as f:
        expected = json.load(f)

    tokenizer = AutoTokenizer.from_pretrained(export_dir)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if ids != expected["ids"]:
        first = next((i for i, (a, b) in enumerate(zip(ids, expected["ids"])) if a != b), min(len(ids), len(expected["ids"])))
        print(f"tokenizer: {len(ids)} ids against ailla's {len(expected['ids'])}; first difference at {first}")
        return 1

    model = GPT2LMHeadModel.from_pretrained(export_dir).double().eval()
    ctx = model.config.n_positions
    predicted = len(ids) - 1
    nll = []
    with torch.no_grad():
        for start in range(0, predicted, ctx):
            length = min(ctx, predicted - start)
            inputs = torch.tensor([ids[start : start + length]])
            targets = torch.tensor(ids[start + 1 : start + length + 1])
            log_p = torch.log_softmax(model(inputs).logits[0], dim=-1)
            nll.extend((-log_p[torch.arange(length), targets]).tolist())
    ailla = expected["nll_nats"]
    if len(nll) != len(ailla):
        print(f"{len(nll)} scored tokens against ailla's {len(ailla)}")
        return 1
    differences = [abs(a - b) for a, b in zip(nll, ailla)]
    mean_difference = sum(differences) / len(differences)
    mean_hf, mean_ailla = sum(nll) / len(nll), sum(ailla) / len(ailla)
    print(
        f"{len(ids)} ids equal; {len(nll)} tokens: transformers {mean_hf:.6f} nats/token, ailla {mean_ailla:.6f}; "
        f"per-token difference mean {mean_difference:.2e}, max {max(differences):.2e} nats"
    )
    return 0 if mean_difference <= 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main())
