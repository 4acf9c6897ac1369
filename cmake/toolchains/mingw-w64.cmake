# Cross-compiling mpp for Windows with Debian's mingw-w64 (posix threads flavour); the results run
# under wine. Boost, cereal, fmt (header-only) and Catch2 headers come from the host's packages.
set(CMAKE_SYSTEM_NAME Windows)
set(CMAKE_SYSTEM_PROCESSOR x86_64)
set(CMAKE_CXX_COMPILER x86_64-w64-mingw32-g++-posix)
set(CMAKE_C_COMPILER x86_64-w64-mingw32-gcc-posix)
set(CMAKE_RC_COMPILER x86_64-w64-mingw32-windres)
set(CMAKE_FIND_ROOT_PATH /usr/x86_64-w64-mingw32)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)
# The header-only dependencies come from the host's packages, but /usr/include itself must not be
# on the include path (it holds the host's libc): stage links to just those libraries.
set(MPP_HEADER_DEPS_DIR "${CMAKE_BINARY_DIR}/mpp-header-deps" CACHE PATH "")
foreach(dep boost fmt cereal catch2)
  if(NOT EXISTS "${MPP_HEADER_DEPS_DIR}/${dep}" AND EXISTS "/usr/include/${dep}")
    file(MAKE_DIRECTORY "${MPP_HEADER_DEPS_DIR}")
    file(CREATE_LINK "/usr/include/${dep}" "${MPP_HEADER_DEPS_DIR}/${dep}" SYMBOLIC)
  endif()
endforeach()
set(CMAKE_EXE_LINKER_FLAGS_INIT "-static -static-libgcc -static-libstdc++")
set(CMAKE_CROSSCOMPILING_EMULATOR /usr/lib/wine/wine64)
