# Install rules: headers, an exported mpp::mpp target, mppConfig.cmake with find_dependency for
# each dependency, an architecture-independent version file and a relocatable mpp.pc. All of it is
# the component mpp_development and needs nothing built:
#   cmake --install <build> --component mpp_development --prefix <dir>
include(CMakePackageConfigHelpers)

if(NOT MPP_DEPENDENCIES_FROM_PACKAGES)
  # A downloaded fmt or cereal is not installed with mpp, so an installed mpp could not find it.
  if(PROJECT_IS_TOP_LEVEL)
    set(mode WARNING)
  else()
    set(mode STATUS)
  endif()
  message(${mode} "mpp: fmt or cereal was downloaded; mpp's install rules are skipped "
                  "(install fmt and cereal as packages, e.g. Debian libfmt-dev libcereal-dev)")
  return()
endif()

set(MPP_CMAKE_DIR "${CMAKE_INSTALL_DATADIR}/cmake/mpp")
install(DIRECTORY "${PROJECT_SOURCE_DIR}/include/" DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}"
  COMPONENT mpp_development)
install(TARGETS mpp EXPORT mppTargets COMPONENT mpp_development)
if(TARGET mpp_connection)
  install(TARGETS mpp_connection EXPORT mppTargets COMPONENT mpp_development)
endif()
install(EXPORT mppTargets NAMESPACE mpp:: DESTINATION "${MPP_CMAKE_DIR}"
  COMPONENT mpp_development)
configure_package_config_file("${PROJECT_SOURCE_DIR}/cmake/mppConfig.cmake.in" "${PROJECT_BINARY_DIR}/mppConfig.cmake"
  INSTALL_DESTINATION "${MPP_CMAKE_DIR}")
write_basic_package_version_file("${PROJECT_BINARY_DIR}/mppConfigVersion.cmake"
  COMPATIBILITY SameMinorVersion ARCH_INDEPENDENT)
install(FILES "${PROJECT_BINARY_DIR}/mppConfig.cmake" "${PROJECT_BINARY_DIR}/mppConfigVersion.cmake"
  DESTINATION "${MPP_CMAKE_DIR}" COMPONENT mpp_development)

# pkg-config file, relocatable through ${pcfiledir}.
file(RELATIVE_PATH MPP_PC_TO_PREFIX "/${CMAKE_INSTALL_DATADIR}/pkgconfig" "/")
configure_file("${PROJECT_SOURCE_DIR}/cmake/mpp.pc.in" "${PROJECT_BINARY_DIR}/mpp.pc" @ONLY)
install(FILES "${PROJECT_BINARY_DIR}/mpp.pc" DESTINATION "${CMAKE_INSTALL_DATADIR}/pkgconfig"
  COMPONENT mpp_development)
