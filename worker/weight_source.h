// Where weights come from: a Hugging Face checkpoint, seeded random values (--random-weights),
// or an HDF5 checkpoint (worker/h5_checkpoint.h). The loader asks only for the slices a rank owns.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"
#include "worker/checkpoint.h"

namespace dshpc {

// The stored bytes a source has read: a rank's load-time I/O.
struct WeightReadStats {
  int64_t bytes = 0;     // tensor bytes read: the slices (safetensors), whole chunks (HDF5)
  int64_t reads = 0;     // read calls
  double seconds = 0.0;  // wall time spent in them (conversion to float32 included)
  std::map<std::string, int64_t> bytes_by_tensor;
  std::map<std::string, int64_t> element_bytes;  // the stored element size of each tensor read

  void add(const std::string& tensor, int64_t read_bytes, int64_t element_size) {
    bytes += read_bytes;
    bytes_by_tensor[tensor] += read_bytes;
    element_bytes[tensor] = element_size;
  }
};

class WeightSource {
 public:
  virtual ~WeightSource() = default;
  virtual std::string describe() const = 0;  // for messages: the directory or "random(seed)"
  // The full (unsliced) shape of a tensor, or NOT_FOUND naming it.
  virtual StatusOr<std::vector<int64_t>> shape(const std::string& name) const = 0;
  // Row-major float32 slice rows × cols (cols = Range::all() for 1-D tensors).
  virtual Status read_f32(const std::string& name, Range rows, Range cols, float* dst) const = 0;
  // What has been read so far (sources that read no stored data report zeros).
  virtual WeightReadStats read_stats() const { return {}; }
};

// Reads from an open checkpoint (which must outlive the source).
std::unique_ptr<WeightSource> make_checkpoint_source(const Checkpoint& checkpoint);

// Seeded random weights: every element is a pure function of (seed, tensor name, row, column),
// so each rank generates exactly its own slice of the same full model. Shapes come from
// `expected_shapes` (name → shape) supplied by the model's weight table. Norm weights
// (names ending in "norm.weight" or "layernorm.weight") are ones; biases zeros; the rest uniform
// in ±1/sqrt(in_features).
std::unique_ptr<WeightSource> make_random_source(
    uint64_t seed, std::vector<std::pair<std::string, std::vector<int64_t>>> expected_shapes);

}  // namespace dshpc
