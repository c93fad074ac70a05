#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets into tests/fuzz/corpus/<target>/ (run once; the
files are committed). Inputs that once crashed a target are committed beside them by hand, named
regression-*, and are never rewritten here."""
import json
import os
import struct

here = os.path.dirname(os.path.abspath(__file__))
root = os.path.dirname(os.path.dirname(here))


def write(target, name, data):
    d = os.path.join(here, "corpus", target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---- safetensors: 8-byte little-endian length, JSON header, data.
def safetensors(header, data_bytes, pad=0):
    text = json.dumps(header, separators=(",", ":")) + " " * pad
    return struct.pack("<Q", len(text)) + text.encode() + b"\0" * data_bytes


write("safetensors", "f32", safetensors(
    {"__metadata__": {"format": "pt"}, "a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}}, 24))
write("safetensors", "mixed", safetensors({
    "w": {"dtype": "BF16", "shape": [4], "data_offsets": [0, 8]},
    "s": {"dtype": "F8_E4M3", "shape": [2, 2], "data_offsets": [8, 12]},
    "scale": {"dtype": "F32", "shape": [], "data_offsets": [12, 16]},
    "empty": {"dtype": "I64", "shape": [0, 5], "data_offsets": [16, 16]},
    "h": {"dtype": "F16", "shape": [1], "data_offsets": [16, 18]},
    "b": {"dtype": "BOOL", "shape": [3], "data_offsets": [18, 21]}}, 21, pad=5))
write("safetensors", "gap", safetensors({
    "x": {"dtype": "U8", "shape": [2], "data_offsets": [4, 6]},
    "y": {"dtype": "I8", "shape": [2], "data_offsets": [0, 2]}}, 16))
write("safetensors", "overlap", safetensors({
    "x": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
    "y": {"dtype": "U8", "shape": [4], "data_offsets": [2, 6]}}, 8))
write("safetensors", "huge_shape", safetensors(
    {"x": {"dtype": "F64", "shape": [4294967296, 4294967296], "data_offsets": [0, 8]}}, 8))
write("safetensors", "duplicate_key",
      struct.pack("<Q", 60) + b'{"x":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"x":{}}' + b"\0")
with open(os.path.join(root, "tests/fixtures/models/llama-mha/model.safetensors"), "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    write("safetensors", "llama_mha_header_only", struct.pack("<Q", n) + f.read(n))

# ---- tokenizer: first byte 0 = encode, 2 = encode with special tokens, 4 = encode + skip
# special in the decode check, 1/3/5 = decode 3-byte ids.
texts = [
    "Hello, world! How are you?",
    "def f(x):\n    return x ** 2  # squares\n\n\n",
    "深度求索是一家人工智能公司。",
    "Émoji: 😀👍🏽 and ZWJ 👨‍👩‍👧",
    "<｜begin▁of▁sentence｜>User: hi<｜end▁of▁sentence｜>",
    "<｜User｜>What is 1234567 + 89?<｜Assistant｜>",
    "   leading and trailing spaces   \t\r\n",
    "numbers 3.14159 1e10 0x1F 1,000,000",
    "mixed\u00a0nbsp\u2003em space\u200bzero width",
]
for i, t in enumerate(texts):
    write("tokenizer", f"encode_{i}", bytes([0]) + t.encode())
    write("tokenizer", f"encode_special_{i}", bytes([2]) + t.encode())
write("tokenizer", "encode_invalid_utf8", bytes([0]) + b"ok \xff\xfe \xc3( \xe2\x82 \xf0\x9f\x98 \xed\xa0\x80 end")
write("tokenizer", "encode_skip", bytes([4]) + "<｜end▁of▁sentence｜>tail".encode())
for i, ids in enumerate([[0, 1, 2], [100, 5000, 128000], [128798, 128799, 128800, 128801], [129279, 200000]]):
    write("tokenizer", f"decode_{i}", bytes([1]) + b"".join(struct.pack("<I", x)[:3] for x in ids))
write("tokenizer", "decode_split_utf8", bytes([5]) + b"".join(struct.pack("<I", x)[:3] for x in [1, 2, 3, 4, 5, 6]))

# ---- openai_request: request bodies.
bodies = {
    "completion": {"model": "demo", "prompt": "Hello", "max_tokens": 5, "temperature": 0.7, "top_p": 0.9,
                   "n": 2, "stop": ["\n", "END"], "seed": 42, "logprobs": 2, "stream": True,
                   "stream_options": {"include_usage": True}},
    "completion_ids": {"prompt": [1, 2, 3, 4], "max_tokens": 1, "top_k": 40, "ignore_eos": True,
                       "presence_penalty": 0.5, "frequency_penalty": -0.5, "repetition_penalty": 1.1,
                       "stop_token_ids": [1, 2], "best_of": 1, "suffix": "", "echo": False},
    "chat": {"model": "demo", "messages": [{"role": "system", "content": "Be brief."},
                                           {"role": "user", "content": "Hi"}],
             "max_completion_tokens": 8, "logprobs": True, "top_logprobs": 3},
    "chat_parts": {"messages": [{"role": "developer", "content": [{"type": "text", "text": "a"},
                                                                  {"type": "text", "text": "b"}]},
                                {"role": "user", "content": "q"},
                                {"role": "assistant", "tool_calls": [{"type": "function", "function":
                                    {"name": "f", "arguments": "{\"x\": 1}"}}]},
                                {"role": "tool", "content": "42"}],
                   "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
                   "chat_template_kwargs": {"thinking": True}, "add_generation_prompt": False},
    "wrong_types": {"prompt": 5, "max_tokens": "many", "n": 1.5, "stream": "yes", "temperature": None},
    "ranges": {"prompt": "x", "temperature": -1, "top_p": 0, "n": 1000, "logprobs": 6, "max_tokens": 0},
}
for name, body in bodies.items():
    write("openai_request", name, json.dumps(body, ensure_ascii=False))
write("openai_request", "nan", '{"prompt": "x", "temperature": NaN, "top_p": Infinity}')
write("openai_request", "huge_numbers", '{"prompt": "x", "max_tokens": 1e400, "seed": 18446744073709551616, "n": -9223372036854775809}')
write("openai_request", "invalid_utf8", b'{"prompt": "\xff\xfe", "messages": [{"role": "user", "content": "\xc3("}]}')
write("openai_request", "escapes", '{"messages": [{"role": "user", "content": "\\ud800 \\u0000 \\u00e9 {{ x }} {% if %}"}]}')
write("openai_request", "deep", '{"tools": ' + "[" * 40 + "]" * 40 + ', "prompt": "x"}')
write("openai_request", "not_object", '[1, 2, 3]')
write("openai_request", "empty", '')

# ---- http: raw requests on one connection.
def req(method, target, body=b"", headers=(), version="HTTP/1.1"):
    if isinstance(body, str):
        body = body.encode()
    lines = [f"{method} {target} {version}", "Host: localhost"] + list(headers)
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


ct = ["Content-Type: application/json"]
chat = json.dumps({"model": "demo", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4})
write("http", "health", req("GET", "/health"))
write("http", "models", req("GET", "/v1/models") + req("GET", "/v1/models/demo") + req("GET", "/v1/models/other"))
write("http", "metrics_head", req("HEAD", "/metrics"))
write("http", "chat", req("POST", "/v1/chat/completions", chat, ct))
write("http", "completion_stream", req("POST", "/v1/completions",
      json.dumps({"prompt": "Hello", "max_tokens": 6, "stream": True, "n": 2, "logprobs": 1,
                  "stream_options": {"include_usage": True}, "stop": ["zz"]}), ct))
write("http", "queue_full", req("POST", "/v1/completions", '{"prompt": "x", "max_tokens": 3}', ct))
write("http", "error_mid_stream", req("POST", "/v1/chat/completions",
      json.dumps({"messages": [{"role": "user", "content": "x"}], "max_tokens": 5, "stream": True}), ct))
write("http", "timeout_finish", req("POST", "/v1/completions", '{"prompt": [5, 6], "max_tokens": 7}', ct))
write("http", "tokenize", req("POST", "/tokenize", '{"prompt": "Hello"}', ct)
      + req("POST", "/detokenize", '{"tokens": [1, 2, 3]}', ct))
write("http", "pipelined", req("GET", "/health") + req("POST", "/v1/completions", '{"prompt":"a","max_tokens":2}', ct)
      + req("GET", "/nowhere") + req("DELETE", "/v1/completions"))
chunked = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" \
          b"5\r\n{\"pro\r\n16\r\nmpt\": \"hi\", \"n\": 1}\r\n0\r\n\r\n"
write("http", "chunked", chunked)
write("http", "expect_continue", req("POST", "/v1/completions", '{"prompt": "x"}', ct + ["Expect: 100-continue"]))
write("http", "http10", req("GET", "/health", version="HTTP/1.0") )
write("http", "huge_content_length", b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999\r\n\r\n{}")
write("http", "bad_request_line", b"GET\r\n\r\n")
write("http", "long_header", b"GET /health HTTP/1.1\r\nX-Long: " + b"a" * 1100 + b"\r\n\r\n")
write("http", "wrong_content_type", req("POST", "/v1/completions", "prompt=x", ["Content-Type: application/x-www-form-urlencoded"]))
