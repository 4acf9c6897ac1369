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

# Boost is never needed to use mpp: hide it from every configure here.
set(common -G "${GENERATOR}" -DCMAKE_CXX_COMPILER=${CMAKE_CXX_COMPILER} -DCMAKE_BUILD_TYPE=Release
    -DCMAKE_DISABLE_FIND_PACKAGE_Boost=ON)

# Fails if an installed CMake or pkg-config file names Boost.
function(check_no_boost dir)
  file(GLOB_RECURSE files "${dir}/*.cmake" "${dir}/*.pc")
  foreach(f IN LISTS files)
    file(READ "${f}" body)
    if(body MATCHES "[Bb]oost")
      message(FATAL_ERROR "${f} mentions Boost, which mpp does not need")
    endif()
  endforeach()
endfunction()
if(MODE STREQUAL "find_package")
  set(prefix "${WORK_DIR}/prefix")
  # Defaults but tests and benchmarks off; the headers' component installs without building.
  run(${CMAKE_COMMAND} -S "${MPP_SOURCE_DIR}" -B "${WORK_DIR}/mpp-build" ${common}
      -DMPP_BUILD_TESTS=OFF -DMPP_BUILD_BENCHMARKS=OFF)
  run(${CMAKE_COMMAND} --install "${WORK_DIR}/mpp-build" --prefix "${prefix}"
      --component mpp_development)
  check_no_boost("${prefix}")
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
if(MODE STREQUAL "add_subdirectory")
  # The parent's export set and mpp's own install side by side.
  run(${CMAKE_COMMAND} --install "${WORK_DIR}/app" --prefix "${WORK_DIR}/prefix")
  foreach(f share/cmake/consumer/consumerTargets.cmake share/cmake/mpp/mppConfig.cmake
            include/mpp/mpp.hpp)
    if(NOT EXISTS "${WORK_DIR}/prefix/${f}")
      message(FATAL_ERROR "install is missing ${f}")
    endif()
  endforeach()
  check_no_boost("${WORK_DIR}/prefix")
endif()
