#include "coordinator/version.h"

namespace dshpc {
const char* version_string() {
  return "dshpc 0.1.0";
}
}  // namespace dshpc
