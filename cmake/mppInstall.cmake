# Install rules: headers, an exported mpp::mpp target, mppConfig.cmake with find_dependency for
# each dependency, an architecture-independent version file and a relocatable mpp.pc.
include(CMakePackageConfigHelpers)

if(NOT MPP_DEPENDENCIES_FROM_PACKAGES)
  message(WARNING "mpp: some dependencies were downloaded; install rules are skipped "
                  "(install Boost, fmt and cereal as packages to install mpp)")
  return()
endif()

set(MPP_CMAKE_DIR "${CMAKE_INSTALL_DATADIR}/cmake/mpp")
install(DIRECTORY include/ DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}")
install(TARGETS mpp EXPORT mppTargets)
install(EXPORT mppTargets NAMESPACE mpp:: DESTINATION "${MPP_CMAKE_DIR}")
configure_package_config_file(cmake/mppConfig.cmake.in "${PROJECT_BINARY_DIR}/mppConfig.cmake"
  INSTALL_DESTINATION "${MPP_CMAKE_DIR}")
write_basic_package_version_file("${PROJECT_BINARY_DIR}/mppConfigVersion.cmake"
  COMPATIBILITY SameMinorVersion ARCH_INDEPENDENT)
install(FILES "${PROJECT_BINARY_DIR}/mppConfig.cmake" "${PROJECT_BINARY_DIR}/mppConfigVersion.cmake"
  DESTINATION "${MPP_CMAKE_DIR}")

# pkg-config file, relocatable through ${pcfiledir}.
file(RELATIVE_PATH MPP_PC_TO_PREFIX "/${CMAKE_INSTALL_DATADIR}/pkgconfig" "/")
configure_file(cmake/mpp.pc.in "${PROJECT_BINARY_DIR}/mpp.pc" @ONLY)
install(FILES "${PROJECT_BINARY_DIR}/mpp.pc" DESTINATION "${CMAKE_INSTALL_DATADIR}/pkgconfig")
