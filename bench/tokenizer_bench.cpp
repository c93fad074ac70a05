// Tokenizer throughput: encodes a few MB of mixed text (the golden cases repeated -- Chinese,
// Japanese, code, licence text, emoji -- plus generated English-like prose and C-like code) in
// request-sized documents, then decodes it, and prints MB/s and tokens/s with the command line
// that reproduces the run. The first encode pass starts with an empty word cache ("cold"); the
// second reuses it ("warm"), which is the steady state of a server. For scale it also prints
// memcpy bandwidth over the same bytes, the ceiling for any pass over the text.
//
//   ./build/bin/dshpc_tokenizer_bench [--tokenizer DIR] [--golden FILE] [--mb N]
//                                     [--threads N] [--document-kb N]
#include <algorithm>
#include <atomic>
#include <boost/json.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "coordinator/tokenizer.h"

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

struct Options {
  std::string tokenizer_dir = DSHPC_SOURCE_DIR "/configs/tokenizers/deepseek-v3";
  std::string golden = DSHPC_SOURCE_DIR "/tests/fixtures/tokenizer/deepseek-v3/encode_golden.json";
  double megabytes = 8.0;
  int threads = 1;
  size_t document_bytes = 4096;
};

bool parse_options(int argc, char** argv, Options* options) {
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    if (flag == "--help" || i + 1 >= argc) {
      std::cerr << "usage: " << argv[0]
                << " [--tokenizer DIR] [--golden FILE] [--mb N (8)] [--threads N (1)]"
                   " [--document-kb N (4)]\n";
      return false;
    }
    std::string value = argv[++i];
    if (flag == "--tokenizer") {
      options->tokenizer_dir = value;
    } else if (flag == "--golden") {
      options->golden = value;
    } else if (flag == "--mb") {
      options->megabytes = std::atof(value.c_str());
    } else if (flag == "--threads") {
      options->threads = std::max(1, std::atoi(value.c_str()));
    } else if (flag == "--document-kb") {
      options->document_bytes = static_cast<size_t>(std::max(1, std::atoi(value.c_str()))) * 1024;
    } else {
      std::cerr << "unknown option " << flag << "\n";
      return false;
    }
  }
  return true;
}

std::vector<std::string> golden_texts(const std::string& path) {
  std::ifstream in(path);
  std::stringstream buffer;
  buffer << in.rdbuf();
  boost::system::error_code error;
  boost::json::value golden = boost::json::parse(buffer.str(), error);
  std::vector<std::string> texts;
  if (error || !golden.is_object() || !golden.as_object().contains("cases")) return texts;
  for (const auto& entry : golden.at("cases").as_array()) {
    texts.emplace_back(entry.at("text").as_string());
  }
  return texts;
}

// English-like prose: Zipf-ish picks from a fixed word list plus random "rare" words.
std::string generated_prose(size_t bytes, std::mt19937* rng) {
  static const char* const kWords[] = {
      "the",      "of",    "and",    "to",       "in",       "a",         "is",         "that",
      "for",      "it",    "as",     "was",      "with",     "be",        "by",         "on",
      "not",      "he",    "this",   "are",      "or",       "his",       "from",       "at",
      "which",    "but",   "have",   "an",       "had",      "they",      "you",        "were",
      "their",    "one",   "all",    "we",       "can",      "her",       "has",        "there",
      "been",     "if",    "more",   "when",     "will",     "would",     "who",        "so",
      "no",       "model", "tensor", "parallel", "pipeline", "attention", "throughput", "latency",
      "scheduler"};
  std::uniform_int_distribution<size_t> word(0, std::size(kWords) - 1);
  std::uniform_int_distribution<int> percent(0, 99), letters(3, 11), letter(0, 25);
  std::string text;
  while (text.size() < bytes) {
    int roll = percent(*rng);
    if (roll < 85) {
      text += kWords[std::min(word(*rng), word(*rng))];
    } else if (roll < 95) {
      for (int k = letters(*rng); k > 0; --k) text += static_cast<char>('a' + letter(*rng));
    } else {
      text += std::to_string(percent(*rng) * 37 + 1900);
    }
    text += percent(*rng) < 8 ? ". " : percent(*rng) < 3 ? ",\n" : " ";
  }
  return text;
}

std::string generated_code(size_t bytes, std::mt19937* rng) {
  std::uniform_int_distribution<int> pick(0, 9), number(0, 4095);
  std::string text;
  int depth = 0;
  while (text.size() < bytes) {
    std::string indent(static_cast<size_t>(depth) * 2, ' ');
    int n = number(*rng);
    switch (pick(*rng)) {
      case 0:
        text += indent + "for (int i_" + std::to_string(n) + " = 0; i_" + std::to_string(n) +
                " < size; ++i_" + std::to_string(n) + ") {\n";
        ++depth;
        break;
      case 1:
        if (depth > 0) {
          --depth;
          text += std::string(depth * 2, ' ') + "}\n";
        }
        break;
      case 2:
        text += indent + "auto value_" + std::to_string(n) + " = buffer[" + std::to_string(n % 64) +
                "] * 0x" + std::to_string(n) + ";\n";
        break;
      case 3:
        text += indent + "// Accumulate partial sums; see kernels/matmul.h.\n";
        break;
      case 4:
        text += indent + "if (status.ok() && count_" + std::to_string(n % 8) + " > " +
                std::to_string(n) + ") return Status::kInvalid;\n";
        break;
      case 5:
        text += indent + "std::vector<float> weights(" + std::to_string(n) + ", 0.5f);\n";
        break;
      default:
        text += indent + "result += compute(x, y, " + std::to_string(n) + ");\n";
    }
  }
  return text;
}

// Cuts text into documents of about `size` bytes at UTF-8 character boundaries.
void cut_documents(const std::string& text, size_t size, std::vector<std::string>* documents) {
  size_t start = 0;
  while (start < text.size()) {
    size_t end = std::min(text.size(), start + size);
    while (end < text.size() && (static_cast<unsigned char>(text[end]) & 0xC0) == 0x80) ++end;
    documents->push_back(text.substr(start, end - start));
    start = end;
  }
}

struct PassResult {
  double seconds = 0;
  size_t tokens = 0;
  bool ok = true;
};

PassResult encode_pass(const dshpc::Tokenizer& tokenizer, const std::vector<std::string>& docs,
                       int threads, std::vector<std::vector<int32_t>>* ids) {
  std::atomic<size_t> next{0}, tokens{0};
  std::atomic<bool> ok{true};
  auto worker = [&] {
    for (size_t i = next++; i < docs.size(); i = next++) {
      dshpc::StatusOr<std::vector<int32_t>> encoded = tokenizer.encode(docs[i]);
      if (!encoded.ok()) {
        ok = false;
        continue;
      }
      tokens += encoded->size();
      (*ids)[i] = std::move(encoded).value();
    }
  };
  Clock::time_point start = Clock::now();
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t) pool.emplace_back(worker);
  worker();
  for (std::thread& thread : pool) thread.join();
  return {seconds_since(start), tokens.load(), ok.load()};
}

void print_rate(const char* label, double bytes, size_t tokens, double seconds) {
  std::printf("%-28s %8.2f MB/s  %11.0f tokens/s  (%.3f s)\n", label, bytes / seconds / 1e6,
              static_cast<double>(tokens) / seconds, seconds);
}

}  // namespace

int main(int argc, char** argv) {
  Options options;
  if (!parse_options(argc, argv, &options)) return 2;

  Clock::time_point load_start = Clock::now();
  dshpc::StatusOr<std::unique_ptr<dshpc::Tokenizer>> loaded =
      dshpc::Tokenizer::load(options.tokenizer_dir);
  if (!loaded.ok()) {
    std::cerr << "cannot load tokenizer: " << loaded.status().to_string() << "\n";
    return 1;
  }
  double load_seconds = seconds_since(load_start);
  const dshpc::Tokenizer& tokenizer = **loaded;

  // Corpus: half golden texts repeated, a quarter prose, a quarter code.
  const auto total = static_cast<size_t>(options.megabytes * 1e6);
  std::vector<std::string> golden = golden_texts(options.golden);
  if (golden.empty()) {
    std::cerr << "cannot read golden cases from " << options.golden << "\n";
    return 1;
  }
  std::string mixed;
  for (size_t i = 0; mixed.size() < total / 2; ++i) mixed += golden[i % golden.size()] + "\n";
  std::mt19937 rng(42);
  std::vector<std::string> documents;
  cut_documents(mixed, options.document_bytes, &documents);
  cut_documents(generated_prose(total / 4, &rng), options.document_bytes, &documents);
  cut_documents(generated_code(total / 4, &rng), options.document_bytes, &documents);
  std::shuffle(documents.begin(), documents.end(), rng);
  double bytes = 0;
  for (const std::string& document : documents) bytes += static_cast<double>(document.size());

  std::string command;
  for (int i = 0; i < argc; ++i) command += (i ? " " : "") + std::string(argv[i]);
  std::printf("command: %s\n", command.c_str());
  std::printf("tokenizer: %s (%zu merges, load %.0f ms)\n", options.tokenizer_dir.c_str(),
              tokenizer.merge_count(), load_seconds * 1e3);
  std::printf("corpus: %.2f MB in %zu documents of ~%zu bytes, %d thread(s), %u hardware threads\n",
              bytes / 1e6, documents.size(), options.document_bytes, options.threads,
              std::thread::hardware_concurrency());

  std::vector<std::vector<int32_t>> ids(documents.size());
  PassResult cold = encode_pass(tokenizer, documents, options.threads, &ids);
  PassResult warm = encode_pass(tokenizer, documents, options.threads, &ids);
  if (!cold.ok || !warm.ok) {
    std::cerr << "encode failed\n";
    return 1;
  }
  print_rate("encode (cold word cache)", bytes, cold.tokens, cold.seconds);
  print_rate("encode (warm word cache)", bytes, warm.tokens, warm.seconds);
  std::printf("%-28s %8.2f bytes/token\n", "compression", bytes / static_cast<double>(warm.tokens));

  Clock::time_point decode_start = Clock::now();
  size_t decoded_bytes = 0;
  for (const auto& document_ids : ids) {
    dshpc::StatusOr<std::string> text = tokenizer.decode(document_ids);
    if (!text.ok()) return 1;
    decoded_bytes += text->size();
  }
  print_rate("decode", static_cast<double>(decoded_bytes), warm.tokens,
             seconds_since(decode_start));

  Clock::time_point stream_start = Clock::now();
  size_t streamed_bytes = 0;
  for (const auto& document_ids : ids) {
    dshpc::StreamDecoder stream(tokenizer);
    for (int32_t id : document_ids) {
      dshpc::StatusOr<std::string> piece = stream.push(id);
      if (!piece.ok()) return 1;
      streamed_bytes += piece->size();
    }
    streamed_bytes += stream.finish().size();
  }
  print_rate("stream decode (per token)", static_cast<double>(streamed_bytes), warm.tokens,
             seconds_since(stream_start));

  // memcpy over the same bytes: the ceiling for any single pass over the text.
  std::string source = mixed, target(mixed.size(), '\0');
  Clock::time_point copy_start = Clock::now();
  const int copies = 20;
  for (int k = 0; k < copies; ++k) {
    std::memcpy(target.data(), source.data(), source.size());
    source[static_cast<size_t>(k)] ^= target[static_cast<size_t>(k) + 1];
  }
  double copy_rate = static_cast<double>(source.size()) * copies / seconds_since(copy_start);
  std::printf("%-28s %8.2f MB/s  (one thread, for scale)\n", "memcpy", copy_rate / 1e6);
  return 0;
}
