#pragma once
namespace dshpc {
const char* version_string();
}  // namespace dshpc
