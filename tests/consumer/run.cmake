# cmake -P script: builds and runs one consumer app from scratch (see CMakeLists.txt here).
cmake_minimum_required(VERSION 3.21)
file(REMOVE_RECURSE "${WORK_DIR}")
set(app_src "${CMAKE_CURRENT_LIST_DIR}/${MODE}")

function(run)
  execute_process(COMMAND ${ARGV} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "failed (${rc}): ${ARGV}")
  endif()
endfunction()

set(common -G "${GENERATOR}" -DCMAKE_CXX_COMPILER=${CMAKE_CXX_COMPILER} -DCMAKE_BUILD_TYPE=Release)
if(MODE STREQUAL "find_package")
  set(prefix "${WORK_DIR}/prefix")
  run(${CMAKE_COMMAND} -S "${MPP_SOURCE_DIR}" -B "${WORK_DIR}/mpp-build" ${common}
      -DMPP_BUILD_TESTS=OFF -DMPP_BUILD_EXAMPLES=OFF -DMPP_BUILD_BENCHMARKS=OFF -DMPP_BUILD_TOOLS=OFF
      -DMPP_INSTALL=ON)
  run(${CMAKE_COMMAND} --install "${WORK_DIR}/mpp-build" --prefix "${prefix}")
  foreach(f share/cmake/mpp/mppConfig.cmake share/cmake/mpp/mppConfigVersion.cmake
            share/pkgconfig/mpp.pc include/mpp/mpp.hpp)
    if(NOT EXISTS "${prefix}/${f}")
      message(FATAL_ERROR "install is missing ${f}")
    endif()
  endforeach()
  run(${CMAKE_COMMAND} -S "${app_src}" -B "${WORK_DIR}/app" ${common}
      "-DCMAKE_PREFIX_PATH=${prefix}")
else()
  run(${CMAKE_COMMAND} -S "${app_src}" -B "${WORK_DIR}/app" ${common}
      "-DMPP_SOURCE_DIR=${MPP_SOURCE_DIR}")
endif()
run(${CMAKE_COMMAND} --build "${WORK_DIR}/app")
run("${WORK_DIR}/app/consumer")
