// Tokenizer: DeepSeek-V3's tokenizer.json against encode_golden.json (every case), streaming
// decode, added-token flags and split behaviors on small tokenizers, UTF-8 handling, load errors
// and the tokenize / detokenize command.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <boost/json.hpp>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include "coordinator/tokenize_command.h"
#include "coordinator/tokenizer.h"
#include "coordinator/tokenizer_pretokenize.h"
#include "coordinator/unicode.h"
#include "coordinator/unicode_regex.h"

namespace dshpc {
namespace {

constexpr char kTokenizerDir[] = DSHPC_SOURCE_DIR "/configs/tokenizers/deepseek-v3";
constexpr char kEncodeGolden[] = DSHPC_FIXTURES_DIR "/tokenizer/deepseek-v3/encode_golden.json";

struct GoldenCase {
  std::string text;
  std::vector<int32_t> ids;
  std::string decoded;
};

std::vector<GoldenCase> read_golden_cases() {
  std::ifstream in(kEncodeGolden);
  std::stringstream buffer;
  buffer << in.rdbuf();
  boost::json::value golden = boost::json::parse(buffer.str());
  std::vector<GoldenCase> cases;
  for (const auto& entry : golden.at("cases").as_array()) {
    GoldenCase c;
    c.text = std::string(entry.at("text").as_string());
    c.decoded = std::string(entry.at("decoded").as_string());
    for (const auto& id : entry.at("ids").as_array()) {
      c.ids.push_back(static_cast<int32_t>(id.as_int64()));
    }
    cases.push_back(std::move(c));
  }
  return cases;
}

std::string describe_ids(const std::vector<int32_t>& ids, size_t around) {
  std::string out;
  size_t begin = around > 4 ? around - 4 : 0;
  for (size_t i = begin; i < ids.size() && i < around + 5; ++i) {
    out += (i == around ? "[" : "") + std::to_string(ids[i]) + (i == around ? "] " : " ");
  }
  return out;
}

class TokenizerGolden : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    StatusOr<std::unique_ptr<Tokenizer>> loaded = Tokenizer::load(kTokenizerDir);
    ASSERT_TRUE(loaded.ok()) << loaded.status().to_string();
    tokenizer_ = std::move(loaded).value().release();
    cases_ = new std::vector<GoldenCase>(read_golden_cases());
  }
  static void TearDownTestSuite() {
    delete tokenizer_;
    delete cases_;
  }
  static const Tokenizer* tokenizer_;
  static const std::vector<GoldenCase>* cases_;
};
const Tokenizer* TokenizerGolden::tokenizer_ = nullptr;
const std::vector<GoldenCase>* TokenizerGolden::cases_ = nullptr;

TEST_F(TokenizerGolden, LoadsTheWholeVocabulary) {
  EXPECT_EQ(tokenizer_->merge_count(), 127741u);
  EXPECT_EQ(tokenizer_->id_limit(), 128815);
  EXPECT_EQ(tokenizer_->added_tokens().size(), 818u);
  EXPECT_EQ(tokenizer_->vocab_size(), 128000u + 815u);  // ids 0-2 are model and added tokens
  EXPECT_EQ(tokenizer_->token_to_id("<｜User｜>"), 128803);
  EXPECT_EQ(tokenizer_->id_to_token(0), "<｜begin▁of▁sentence｜>");
  EXPECT_EQ(tokenizer_->bos_token_id(), 0);
  EXPECT_EQ(tokenizer_->eos_token_id(), 1);
  EXPECT_TRUE(tokenizer_->is_special(1));
  EXPECT_FALSE(tokenizer_->is_special(128803));
  EXPECT_FALSE(tokenizer_->chat_template().empty());
}

TEST_F(TokenizerGolden, EncodeMatchesEveryCase) {
  ASSERT_GE(cases_->size(), 60u);
  for (size_t i = 0; i < cases_->size(); ++i) {
    const GoldenCase& c = (*cases_)[i];
    StatusOr<std::vector<int32_t>> ids = tokenizer_->encode(c.text);
    ASSERT_TRUE(ids.ok()) << "case " << i << ": " << ids.status().to_string();
    if (*ids == c.ids) continue;
    size_t diff = 0;
    while (diff < ids->size() && diff < c.ids.size() && (*ids)[diff] == c.ids[diff]) ++diff;
    FAIL() << "first differing case " << i << " (" << c.text.substr(0, 80) << ") at token " << diff
           << "\n  expected " << describe_ids(c.ids, diff) << "\n  actual   "
           << describe_ids(*ids, diff);
  }
}

TEST_F(TokenizerGolden, DecodeMatchesEveryCase) {
  for (size_t i = 0; i < cases_->size(); ++i) {
    const GoldenCase& c = (*cases_)[i];
    StatusOr<std::string> text = tokenizer_->decode(c.ids);
    ASSERT_TRUE(text.ok()) << "case " << i << ": " << text.status().to_string();
    ASSERT_EQ(*text, c.decoded) << "first differing case " << i;
  }
}

TEST_F(TokenizerGolden, StreamDecodeConcatenatesToTheFullDecode) {
  size_t held_back = 0;
  for (size_t i = 0; i < cases_->size(); ++i) {
    const GoldenCase& c = (*cases_)[i];
    StreamDecoder stream(*tokenizer_);
    std::string joined;
    for (int32_t id : c.ids) {
      StatusOr<std::string> piece = stream.push(id);
      ASSERT_TRUE(piece.ok()) << piece.status().to_string();
      ASSERT_TRUE(is_valid_utf8(*piece)) << "case " << i << " emitted invalid UTF-8";
      if (stream.pending_bytes() > 0) ++held_back;
      joined += *piece;
    }
    joined += stream.finish();
    ASSERT_EQ(joined, c.decoded) << "case " << i;
  }
  // The goldens hold CJK text and emoji whose bytes span tokens; they must have been held back.
  EXPECT_GT(held_back, 0u);
}

TEST_F(TokenizerGolden, SpecialTokensInsideTextAreMatchedWhole) {
  StatusOr<std::vector<int32_t>> ids =
      tokenizer_->encode("<｜User｜>hi<｜Assistant｜><｜end▁of▁sentence｜>");
  ASSERT_TRUE(ids.ok());
  ASSERT_GE(ids->size(), 4u);
  EXPECT_EQ(ids->front(), 128803);
  EXPECT_EQ((*ids)[ids->size() - 2], 128804);
  EXPECT_EQ(ids->back(), 1);
  // A truncated token is plain text.
  StatusOr<std::vector<int32_t>> partial = tokenizer_->encode("<｜User");
  ASSERT_TRUE(partial.ok());
  for (int32_t id : *partial) EXPECT_FALSE(tokenizer_->is_added(id));

  StatusOr<std::string> kept = tokenizer_->decode(std::vector<int32_t>{0, 128803, 1});
  ASSERT_TRUE(kept.ok());
  EXPECT_EQ(*kept, "<｜begin▁of▁sentence｜><｜User｜><｜end▁of▁sentence｜>");
  StatusOr<std::string> skipped = tokenizer_->decode(std::vector<int32_t>{0, 128803, 1}, true);
  ASSERT_TRUE(skipped.ok());
  EXPECT_EQ(*skipped, "<｜User｜>");  // not special in tokenizer.json, so it stays
}

TEST_F(TokenizerGolden, EmptyTextAndEmptyIds) {
  StatusOr<std::vector<int32_t>> ids = tokenizer_->encode("");
  ASSERT_TRUE(ids.ok());
  EXPECT_TRUE(ids->empty());
  StatusOr<std::string> text = tokenizer_->decode(std::vector<int32_t>{});
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text, "");
  StatusOr<std::vector<int32_t>> with_bos = tokenizer_->encode("", /*add_special_tokens=*/true);
  ASSERT_TRUE(with_bos.ok());
  EXPECT_EQ(*with_bos, std::vector<int32_t>{0});
}

// Invalid UTF-8 is repaired to U+FFFD per ill-formed subsequence before encoding.
TEST_F(TokenizerGolden, InvalidUtf8IsReplacedNotRejected) {
  auto encode = [&](std::string_view text) {
    StatusOr<std::vector<int32_t>> ids = tokenizer_->encode(text);
    EXPECT_TRUE(ids.ok());
    return ids.ok() ? *ids : std::vector<int32_t>{};
  };
  EXPECT_EQ(encode("ab\xff"
                   "cd"),
            encode("ab\xEF\xBF\xBD"
                   "cd"));
  EXPECT_EQ(encode("\xE4\xB8"), encode("\xEF\xBF\xBD"));  // truncated 3-byte character
  EXPECT_EQ(encode("\xED\xA0\x80"), encode("\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD"));  // surrogate

  // A token holding half a character decodes to U+FFFD; the stream holds it back instead.
  std::optional<int32_t> lead = tokenizer_->token_to_id(byte_level_encode("\xE4"));
  ASSERT_TRUE(lead.has_value());
  StatusOr<std::string> text = tokenizer_->decode(std::vector<int32_t>{*lead});
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text, "\xEF\xBF\xBD");
  StreamDecoder stream(*tokenizer_);
  StatusOr<std::string> piece = stream.push(*lead);
  ASSERT_TRUE(piece.ok());
  EXPECT_EQ(*piece, "");
  EXPECT_EQ(stream.pending_bytes(), 1u);
  EXPECT_EQ(stream.finish(), "\xEF\xBF\xBD");
}

TEST_F(TokenizerGolden, UnknownIdsAreOutOfRange) {
  StatusOr<std::string> text = tokenizer_->decode(std::vector<int32_t>{5, 129000});
  ASSERT_FALSE(text.ok());
  EXPECT_EQ(text.status().code(), StatusCode::kOutOfRange);
  EXPECT_NE(text.status().message().find("129000"), std::string::npos);
  StreamDecoder stream(*tokenizer_);
  EXPECT_FALSE(stream.push(-1).ok());
}

TEST_F(TokenizerGolden, RandomTextRoundTrips) {
  const char* const pieces[] = {"a", "Z",        " ",      "  ",     "\n", "\t", "1",  "234",
                                "é", "ß",        "中",     "文",     "の", "カ", "한", "ا",
                                "😀", "👍🏽", "\u200d", "\u0301", ".",  "!?", "<",  "｜",
                                "▁", "\r\n",     "\u3000", "\u0085", "_"};
  std::mt19937 rng(1234);
  std::uniform_int_distribution<size_t> pick(0, std::size(pieces) - 1);
  std::uniform_int_distribution<int> length(0, 40);
  for (int trial = 0; trial < 500; ++trial) {
    std::string text;
    for (int k = length(rng); k > 0; --k) text += pieces[pick(rng)];
    StatusOr<std::vector<int32_t>> ids = tokenizer_->encode(text);
    ASSERT_TRUE(ids.ok());
    StatusOr<std::string> decoded = tokenizer_->decode(*ids);
    ASSERT_TRUE(decoded.ok());
    ASSERT_EQ(*decoded, text);
  }
}

TEST_F(TokenizerGolden, ConcurrentEncodesAgree) {
  std::vector<std::thread> threads;
  std::atomic<int> mismatches{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (size_t i = static_cast<size_t>(t); i < cases_->size(); i += 2) {
        StatusOr<std::vector<int32_t>> ids = tokenizer_->encode((*cases_)[i].text);
        if (!ids.ok() || *ids != (*cases_)[i].ids) ++mismatches;
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(mismatches.load(), 0);
}

// ---------------------------------------------------------------------------------------------
// Small hand-written tokenizers.

class TempDir {
 public:
  TempDir() {
    static int counter = 0;
    path_ =
        std::filesystem::temp_directory_path() /
        ("dshpc_tokenizer_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    std::filesystem::create_directories(path_);
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  std::string path() const { return path_.string(); }
  void write(const std::string& name, const std::string& text) const {
    std::ofstream(path_ / name) << text;
  }

 private:
  std::filesystem::path path_;
};

// Bytes a b < > l x r s w n and space (Ġ); one merge "Ġ a"; added tokens with each flag.
std::string tiny_tokenizer_json(const std::string& model_type = "BPE",
                                const std::string& merges = R"(["Ġ a"])",
                                const std::string& pre_tokenizer =
                                    R"({"type": "ByteLevel", "add_prefix_space": false,
                                        "use_regex": true})") {
  return R"({"version": "1.0", "normalizer": null, "pre_tokenizer": )" + pre_tokenizer + R"(,
    "decoder": {"type": "ByteLevel"},
    "added_tokens": [
      {"id": 20, "content": "<lx>", "lstrip": true, "rstrip": false, "single_word": false,
       "normalized": false, "special": true},
      {"id": 21, "content": "<rx>", "lstrip": false, "rstrip": true, "single_word": false,
       "normalized": false, "special": true},
      {"id": 22, "content": "<sw>", "lstrip": false, "rstrip": false, "single_word": true,
       "normalized": false, "special": true},
      {"id": 23, "content": "<n>", "lstrip": false, "rstrip": false, "single_word": false,
       "normalized": true, "special": false}],
    "model": {"type": ")" +
         model_type + R"(", "byte_fallback": false, "ignore_merges": false,
      "vocab": {"a": 0, "b": 1, "<": 2, ">": 3, "l": 4, "x": 5, "r": 6, "s": 7, "w": 8, "n": 9,
                "Ġ": 10, "Ġa": 11},
      "merges": )" +
         merges + "}}";
}

TEST(TokenizerAddedTokens, FlagsBehaveAsInTokenizers) {
  TempDir dir;
  dir.write("tokenizer.json", tiny_tokenizer_json());
  StatusOr<std::unique_ptr<Tokenizer>> tokenizer = Tokenizer::load(dir.path());
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status().to_string();
  auto encode = [&](std::string_view text) {
    StatusOr<std::vector<int32_t>> ids = (*tokenizer)->encode(text);
    EXPECT_TRUE(ids.ok()) << ids.status().to_string();
    return ids.ok() ? *ids : std::vector<int32_t>{};
  };
  using Ids = std::vector<int32_t>;
  EXPECT_EQ(encode("a <lx>b"), (Ids{0, 20, 1}));           // lstrip takes the space
  EXPECT_EQ(encode("a<rx>  b"), (Ids{0, 21, 1}));          // rstrip takes both spaces
  EXPECT_EQ(encode("a<sw>b"), (Ids{0, 2, 7, 8, 3, 1}));    // inside a word: plain text
  EXPECT_EQ(encode("a <sw> b"), (Ids{0, 10, 22, 10, 1}));  // a whole word: the token
  EXPECT_EQ(encode(" a<n>"), (Ids{11, 23}));               // normalized token, merge "Ġ a"
  StatusOr<std::string> text = (*tokenizer)->decode(Ids{11, 20, 23});
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text, " a<lx><n>");
}

// The examples of tokenizers' SplitDelimiterBehavior documentation on "the-final--countdown".
TEST(TokenizerPreTokenizer, SplitBehaviorsMatchTheTokenizersDocumentation) {
  const std::pair<const char*, std::vector<std::string>> expectations[] = {
      {"Removed", {"the", "final", "countdown"}},
      {"Isolated", {"the", "-", "final", "-", "-", "countdown"}},
      {"MergedWithPrevious", {"the-", "final-", "-", "countdown"}},
      {"MergedWithNext", {"the", "-final", "-", "-countdown"}},
      {"Contiguous", {"the", "-", "final", "--", "countdown"}},
  };
  for (const auto& [behavior, expected] : expectations) {
    boost::json::value config = boost::json::parse(
        std::string(R"({"type": "Split", "pattern": {"String": "-"}, "behavior": ")") + behavior +
        R"(", "invert": false})");
    StatusOr<PreTokenizer> pre_tokenizer = PreTokenizer::from_json(&config, "test.json");
    ASSERT_TRUE(pre_tokenizer.ok()) << pre_tokenizer.status().to_string();
    PreTokenizer::Scratch scratch;
    ASSERT_TRUE(pre_tokenizer->split("the-final--countdown", &scratch).ok());
    std::vector<std::string> pieces(scratch.pieces.begin(), scratch.pieces.end());
    EXPECT_EQ(pieces, expected) << behavior;
  }
}

TEST(TokenizerPreTokenizer, EachStepSeesOnlyItsPiece) {
  // \s+(?!\S) at the end of the first piece sees the piece's end, not the digit after it.
  boost::json::value config = boost::json::parse(R"({"type": "Sequence", "pretokenizers": [
      {"type": "Split", "pattern": {"Regex": "\\p{N}"}, "behavior": "Isolated"},
      {"type": "Split", "pattern": {"Regex": "\\s+(?!\\S)|\\s+|\\S+"}, "behavior": "Isolated"}]})");
  StatusOr<PreTokenizer> pre_tokenizer = PreTokenizer::from_json(&config, "test.json");
  ASSERT_TRUE(pre_tokenizer.ok()) << pre_tokenizer.status().to_string();
  PreTokenizer::Scratch scratch;
  ASSERT_TRUE(pre_tokenizer->split("ab  1", &scratch).ok());
  std::vector<std::string> pieces(scratch.pieces.begin(), scratch.pieces.end());
  EXPECT_EQ(pieces, (std::vector<std::string>{"ab", "  ", "1"}));
}

// ---------------------------------------------------------------------------------------------
// Loading errors name the file and the field.

void expect_load_error(const TempDir& dir, StatusCode code, const std::string& needle) {
  StatusOr<std::unique_ptr<Tokenizer>> tokenizer = Tokenizer::load(dir.path());
  ASSERT_FALSE(tokenizer.ok()) << "expected an error mentioning " << needle;
  EXPECT_EQ(tokenizer.status().code(), code) << tokenizer.status().to_string();
  EXPECT_NE(tokenizer.status().message().find(needle), std::string::npos)
      << tokenizer.status().to_string();
}

TEST(TokenizerLoad, MissingDirectoryOrFile) {
  StatusOr<std::unique_ptr<Tokenizer>> missing = Tokenizer::load("/nonexistent/tokenizer/dir");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  TempDir empty;
  expect_load_error(empty, StatusCode::kNotFound, "tokenizer.json");
}

TEST(TokenizerLoad, BadJsonNamesFileAndLine) {
  TempDir dir;
  dir.write("tokenizer.json", "{\n  \"model\": {\n    \"type\": \"BPE\",,\n}");
  expect_load_error(dir, StatusCode::kInvalidArgument, "tokenizer.json: invalid JSON at line 3");
}

TEST(TokenizerLoad, WrongModelType) {
  TempDir dir;
  dir.write("tokenizer.json", tiny_tokenizer_json("WordPiece"));
  expect_load_error(dir, StatusCode::kUnimplemented, "'model.type' is 'WordPiece'");
}

TEST(TokenizerLoad, MergeOfUnknownToken) {
  TempDir dir;
  dir.write("tokenizer.json", tiny_tokenizer_json("BPE", R"(["Ġ a", "q z"])"));
  expect_load_error(dir, StatusCode::kInvalidArgument, "'model.merges[1]'");
}

TEST(TokenizerLoad, BadRegexAndUnsupportedPreTokenizer) {
  TempDir bad_regex;
  bad_regex.write("tokenizer.json", tiny_tokenizer_json("BPE", R"(["Ġ a"])",
                                                        R"({"type": "Sequence", "pretokenizers": [
                                          {"type": "Split", "pattern": {"Regex": "([a-z"},
                                           "behavior": "Isolated"}]})"));
  expect_load_error(bad_regex, StatusCode::kInvalidArgument,
                    "'pre_tokenizer.pretokenizers[0].pattern'");
  TempDir unsupported;
  unsupported.write("tokenizer.json",
                    tiny_tokenizer_json("BPE", R"(["Ġ a"])", R"({"type": "Metaspace"})"));
  expect_load_error(unsupported, StatusCode::kUnimplemented, "'pre_tokenizer.type' is 'Metaspace'");
}

TEST(TokenizerLoad, BadAddedTokenAndBadConfig) {
  TempDir dir;
  std::string json = tiny_tokenizer_json();
  json.replace(json.find("\"content\": \"<lx>\""), 17, "\"content\": 7");
  dir.write("tokenizer.json", json);
  expect_load_error(dir, StatusCode::kInvalidArgument, "'added_tokens[0].content'");

  TempDir config;
  config.write("tokenizer.json", tiny_tokenizer_json());
  config.write("tokenizer_config.json", R"({"bos_token": 5})");
  expect_load_error(config, StatusCode::kInvalidArgument,
                    "tokenizer_config.json: field 'bos_token'");
}

// ---------------------------------------------------------------------------------------------
// UTF-8 and regex helpers.

TEST(TokenizerUnicode, LossyDecodingReplacesMaximalSubparts) {
  EXPECT_EQ(utf8_lossy("a\xF0\x9F"), "a\xEF\xBF\xBD");            // truncated at the end
  EXPECT_EQ(utf8_lossy("\xE0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD");  // overlong lead, then 80
  EXPECT_EQ(utf8_lossy("\xF0\x9F\x98\x80"), "\xF0\x9F\x98\x80");  // complete emoji
  std::string out;
  EXPECT_EQ(append_utf8_lossy("x\xF0\x9F\x98", /*final=*/false, &out), 1u);  // holds 3 bytes
  EXPECT_EQ(out, "x");
  EXPECT_FALSE(is_valid_utf8("\xC0\xAF"));
  EXPECT_TRUE(is_valid_utf8("中文 😀"));
}

TEST(TokenizerUnicode, RegexFollowsOnigurumaShorthands) {
  // Oniguruma's \s includes U+0085 (NEL); PCRE2's does not without the rewrite.
  StatusOr<UnicodeRegex> space = UnicodeRegex::compile(R"(\s+)");
  ASSERT_TRUE(space.ok());
  StatusOr<UnicodeRegex::Match> match = space->find("a\xC2\x85 b", 0);
  ASSERT_TRUE(match.ok());
  EXPECT_TRUE(match->found);
  EXPECT_EQ(match->begin, 1u);
  EXPECT_EQ(match->end, 4u);
  EXPECT_EQ(oniguruma_to_pcre2(R"([^\s\p{L}]\w)"),
            R"([^\t-\r\x{85}\p{Z}\p{L}][\p{L}\p{M}\p{Nd}\p{Pc}])");
  StatusOr<UnicodeRegex> bad = UnicodeRegex::compile("(unclosed");
  EXPECT_FALSE(bad.ok());
}

// ---------------------------------------------------------------------------------------------
// dshpc tokenize / detokenize.

TEST(TokenizerCommand, TokenizeAndDetokenizeJsonLines) {
  std::istringstream in(R"({"text": "Hello, world!"})"
                        "\n"
                        R"({"text": ""})"
                        "\n");
  std::ostringstream out, err;
  EXPECT_EQ(run_tokenize_command(kTokenizerDir, false, in, out, err), 0) << err.str();
  EXPECT_EQ(out.str(), "{\"ids\":[19923,14,2058,3]}\n{\"ids\":[]}\n");

  std::istringstream ids_in("{\"ids\": [19923, 14, 2058, 3]}\n");
  std::ostringstream text_out, text_err;
  EXPECT_EQ(run_tokenize_command(kTokenizerDir, true, ids_in, text_out, text_err), 0);
  EXPECT_EQ(text_out.str(), "{\"text\":\"Hello, world!\"}\n");
}

TEST(TokenizerCommand, BadLinesAreReportedAndSkipped) {
  std::istringstream in("{\"text\": \"ok\"}\nnot json\n{\"txt\": 1}\n\n{\"text\": \"ok\"}\n");
  std::ostringstream out, err;
  EXPECT_EQ(run_tokenize_command(kTokenizerDir, false, in, out, err), kTokenizeExitBadInput);
  std::string output = out.str();
  EXPECT_NE(output.find("{\"error\":\"line 2: "), std::string::npos) << output;
  EXPECT_NE(output.find("{\"error\":\"line 3: "), std::string::npos) << output;
  EXPECT_NE(err.str().find("line 2"), std::string::npos);
  // Lines 1 and 5 are still tokenized; the blank line 4 is skipped.
  EXPECT_EQ(std::count(output.begin(), output.end(), '\n'), 4);

  std::istringstream ids_in("{\"ids\": [1, \"x\"]}\n{\"ids\": [999999]}\n");
  std::ostringstream ids_out, ids_err;
  EXPECT_EQ(run_tokenize_command(kTokenizerDir, true, ids_in, ids_out, ids_err),
            kTokenizeExitBadInput);
  EXPECT_NE(ids_out.str().find("line 2: "), std::string::npos) << ids_out.str();
}

TEST(TokenizerCommand, MissingTokenizerIsExitCodeTwo) {
  std::istringstream in("{\"text\": \"x\"}\n");
  std::ostringstream out, err;
  EXPECT_EQ(run_tokenize_command("/nonexistent", false, in, out, err), kTokenizeExitLoadError);
  EXPECT_NE(err.str().find("/nonexistent"), std::string::npos);
  EXPECT_EQ(out.str(), "");
}

}  // namespace
}  // namespace dshpc
