// Deployment YAML: a flat map whose keys are the command's long option names (dashes or
// underscores), e.g.
//     model: configs/models/demo.json
//     random_weights: true
//     tp: 2
//     preferred_batch_sizes: [8, 16]
// Lists become comma-separated values, booleans switch flags on or off. Options given on the
// command line win over the file. Unknown keys and nested maps are errors naming the key.
#pragma once

#include <string>
#include <vector>

#include "common/options.h"
#include "common/status.h"

namespace dshpc {

Status apply_config_file(const std::string& path, const std::vector<OptionSpec>& specs,
                         Options& options);

}  // namespace dshpc
