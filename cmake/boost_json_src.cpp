// Boost.JSON's implementation, compiled once for machines that have Boost's headers but not its
// compiled libboost_json (see the top-level CMakeLists.txt).
#include <boost/json/src.hpp>
