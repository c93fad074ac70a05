#!/usr/bin/env python3
"""Hugging Face transformers beside `dshpc bench`: the same model shapes (a configs/models/*.json),
random bf16 weights, SDPA attention, the same prompt and generation lengths and batch sizes, on the
same GPU, in the same device call. Prints a table and writes JSON (--json).

    python3 bench/hf_transformers_bench.py --config configs/models/deepseek-llm-7b.json \
        --batch-sizes 1,16,64 --prompt-len 128 --gen-len 128 --json out.json
"""
import argparse
import json
import time

import torch
import transformers


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--batch-sizes", default="1,16,64")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--gen-len", type=int, default=128)
    parser.add_argument("--json", default="")
    args = parser.parse_args()

    with open(args.config) as f:
        raw = json.load(f)
    raw.pop("quantization_config", None)  # random bf16 weights, not an FP8 checkpoint
    config = transformers.AutoConfig.for_model(raw["model_type"], **{
        k: v for k, v in raw.items() if k not in ("model_type", "architectures")})
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.eval()
    results = {"config": args.config, "transformers": transformers.__version__,
               "torch": torch.__version__, "device": torch.cuda.get_device_name(0), "decode": []}
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, "
          f"{torch.cuda.get_device_name(0)}, {args.config}")
    print(f"{'batch':>6} {'tok/s':>10} {'s':>8}")
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        ids = torch.randint(0, config.vocab_size, (batch, args.prompt_len), device="cuda")
        kwargs = dict(max_new_tokens=args.gen_len, min_new_tokens=args.gen_len, do_sample=False,
                      pad_token_id=0)
        with torch.no_grad():
            model.generate(ids[:, :8], max_new_tokens=4, min_new_tokens=4, do_sample=False,
                           pad_token_id=0)  # warm-up
            torch.cuda.synchronize()
            start = time.perf_counter()
            model.generate(ids, **kwargs)
            torch.cuda.synchronize()
            seconds = time.perf_counter() - start
        tokens_per_s = batch * args.gen_len / seconds
        print(f"{batch:>6} {tokens_per_s:>10.1f} {seconds:>8.2f}")
        results["decode"].append({"batch": batch, "tokens_per_s": tokens_per_s,
                                  "seconds": seconds, "prompt_len": args.prompt_len,
                                  "gen_len": args.gen_len})
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
