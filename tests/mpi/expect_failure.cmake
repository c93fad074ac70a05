# ctest driver for jobs that must fail: runs COMMAND and passes only when it exits non-zero within
# LIMIT_S seconds and its output matches every regex in EXPECT. Lists arrive with other separators
# ('|' in COMMAND, '@@' in EXPECT, where '|' is regex syntax), because add_test splits on ';'.
string(REPLACE "|" ";" command "${COMMAND}")
string(REPLACE "@@" ";" patterns "${EXPECT}")
execute_process(COMMAND ${command} RESULT_VARIABLE result OUTPUT_VARIABLE out ERROR_VARIABLE out
                TIMEOUT ${LIMIT_S})
message("${out}")
if(result STREQUAL "0")
  message(FATAL_ERROR "expected a non-zero exit, got 0")
endif()
if(NOT result MATCHES "^[0-9]+$")
  message(FATAL_ERROR "the job did not exit by itself within ${LIMIT_S} s: ${result}")
endif()
foreach(pattern IN LISTS patterns)
  if(NOT out MATCHES "${pattern}")
    message(FATAL_ERROR "output does not match: ${pattern}")
  endif()
endforeach()
