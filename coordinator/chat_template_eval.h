// Renders a parsed chat template. Internal to coordinator/chat_template*.
#pragma once

#include <boost/json.hpp>
#include <string>

#include "common/status.h"
#include "coordinator/chat_template_ast.h"

namespace dshpc::jinja {

// Renders `body` (parsed from `source`, which error messages quote positions in) with the given
// top-level variables.
StatusOr<std::string> render_template(const std::string& source, const Body& body,
                                      const boost::json::object& variables);

}  // namespace dshpc::jinja
