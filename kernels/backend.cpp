#include "kernels/backend.h"

#include <utility>

#include "common/check.h"

namespace dshpc {

DeviceBuffer::~DeviceBuffer() {
  if (owner_ != nullptr && data_ != nullptr) owner_->release(data_, bytes_);
}

DeviceBuffer::DeviceBuffer(DeviceBuffer&& other) noexcept
    : owner_(std::exchange(other.owner_, nullptr)),
      data_(std::exchange(other.data_, nullptr)),
      bytes_(std::exchange(other.bytes_, 0)) {}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
  if (this != &other) {
    if (owner_ != nullptr && data_ != nullptr) owner_->release(data_, bytes_);
    owner_ = std::exchange(other.owner_, nullptr);
    data_ = std::exchange(other.data_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

Mat Mat::row_slice(int64_t begin, int64_t count) const {
  DSHPC_CHECK(begin >= 0 && count >= 0 && begin + count <= rows)
      << "row slice [" << begin << ", " << begin + count << ") of " << rows << " rows";
  Mat out = *this;
  out.data = static_cast<char*>(data) + begin * stride * static_cast<int64_t>(dtype_size(dtype));
  out.rows = count;
  return out;
}

Mat Mat::col_slice(int64_t begin, int64_t count) const {
  DSHPC_CHECK(begin >= 0 && count >= 0 && begin + count <= cols)
      << "column slice [" << begin << ", " << begin + count << ") of " << cols << " columns";
  Mat out = *this;
  out.data = static_cast<char*>(data) + begin * static_cast<int64_t>(dtype_size(dtype));
  out.cols = count;
  return out;
}

}  // namespace dshpc
