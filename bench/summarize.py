#!/usr/bin/env python3
"""Turns one `dshpc bench --json` result and the Hugging Face transformers result of the same
shapes (bench/hf_transformers_bench.py --json), measured in the same device call, into the result
file of record, bench/results/<device>-<model>-<layout>.json, with the fields docs/performance.md
tabulates. With --chart, also draws decode throughput against batch size for both (matplotlib).

    python3 bench/summarize.py --dshpc bench.json [--hf hf.json] --device h200 \
        --out-dir bench/results [--chart chart.png]
"""
import argparse
import json
import os


def by_batch(entries):
    return {int(e["batch"]): e for e in entries}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dshpc", required=True, help="dshpc bench --json output")
    parser.add_argument("--hf", default="", help="hf_transformers_bench.py --json output")
    parser.add_argument("--device", required=True, help="short device name, e.g. h200")
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--chart", default="")
    args = parser.parse_args()

    with open(args.dshpc) as f:
        bench = json.load(f)
    hf = None
    if args.hf and os.path.exists(args.hf):
        with open(args.hf) as f:
            hf = json.load(f)

    model = os.path.splitext(os.path.basename(bench["model"]))[0]
    layout = bench["layout"]
    layout_name = f"tp{layout['tp']}-pp{layout['pp']}-dp{layout['dp']}"
    decode = by_batch(bench["decode"])
    prefill = {int(p["prompt_tokens"]): p for p in bench.get("prefill", [])}
    result = {
        "device": bench["backend"],
        "model": bench["model"],
        "layout": layout,
        "dtype": bench["dtype"],
        "measured_copy_GBps": bench["copy_bandwidth_bytes_per_s"] / 1e9,
        "measured_bf16_tflops": bench["matmul_flops_per_s"] / 1e12,
        "command": bench["command"],
    }
    if 1 in decode:
        result["decode_batch1_tok_s"] = decode[1]["tokens_per_s"]
        result["decode_batch1_roofline_tok_s"] = decode[1]["bound_tokens_per_s"]
        result["decode_batch1_fraction_of_roofline"] = decode[1]["fraction_of_bound"]
    for batch, entry in sorted(decode.items()):
        result[f"throughput_batch{batch}_tok_s"] = entry["tokens_per_s"]
        result[f"throughput_batch{batch}_roofline_tok_s"] = entry["bound_tokens_per_s"]
    for tokens, entry in sorted(prefill.items()):
        result[f"prefill_{tokens}_tflops"] = entry["flops_per_s_per_gpu"] / 1e12
        result[f"prefill_{tokens}_fraction_of_peak"] = entry["fraction_of_peak"]
        result[f"ttft_{tokens}_s"] = entry["time_to_first_token_s"]
    if hf is not None:
        hf_decode = by_batch(hf["decode"])
        result["hf_transformers"] = {"version": hf["transformers"], "torch": hf["torch"]}
        for batch, entry in sorted(hf_decode.items()):
            result[f"hf_transformers_batch{batch}_tok_s"] = entry["tokens_per_s"]
            if batch in decode:
                result[f"speedup_batch{batch}_vs_transformers"] = (
                    decode[batch]["tokens_per_s"] / entry["tokens_per_s"])

    os.makedirs(args.out_dir, exist_ok=True)
    path = os.path.join(args.out_dir, f"{args.device}-{model}-{layout_name}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1, sort_keys=True)
    print(f"wrote {path}")

    if args.chart:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(7, 4.5))
        batches = sorted(decode)
        ax.plot(batches, [decode[b]["tokens_per_s"] for b in batches], "o-", label="dshpc")
        ax.plot(batches, [decode[b]["bound_tokens_per_s"] for b in batches], ":",
                color="gray", label="memory-bandwidth bound (measured copy rate)")
        if hf is not None:
            hb = sorted(by_batch(hf["decode"]))
            ax.plot(hb, [by_batch(hf["decode"])[b]["tokens_per_s"] for b in hb], "s-",
                    label=f"transformers {hf['transformers']} (SDPA)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("decode batch size")
        ax.set_ylabel("generated tokens / s")
        device = bench["backend"].split(" (")[0].replace("cuda:0 ", "")
        ax.set_title(f"{model}, bf16 random weights, {layout_name}, {device}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.chart, dpi=120)
        print(f"wrote {args.chart}")


if __name__ == "__main__":
    main()
