# Target `docs`: mpp's API reference (HTML) from the public headers' doc comments, in
# <build>/docs/html.  Doxygen runs with warnings as errors, so an undocumented public name fails it.
find_package(Doxygen REQUIRED)
set(MPP_DOCS_OUTPUT "${CMAKE_CURRENT_BINARY_DIR}/docs")
configure_file("${CMAKE_CURRENT_LIST_DIR}/Doxyfile.in" "${MPP_DOCS_OUTPUT}/Doxyfile" @ONLY)
file(GLOB MPP_PUBLIC_HEADERS CONFIGURE_DEPENDS "${PROJECT_SOURCE_DIR}/include/mpp/*.hpp")
# The stamp is written only when Doxygen succeeds, so a failed run is retried by the next build.
add_custom_command(
  OUTPUT "${MPP_DOCS_OUTPUT}/docs.stamp"
  COMMAND Doxygen::doxygen "${MPP_DOCS_OUTPUT}/Doxyfile"
  COMMAND "${CMAKE_COMMAND}" -E touch "${MPP_DOCS_OUTPUT}/docs.stamp"
  DEPENDS "${MPP_DOCS_OUTPUT}/Doxyfile" ${MPP_PUBLIC_HEADERS}
  WORKING_DIRECTORY "${PROJECT_SOURCE_DIR}"
  COMMENT "Doxygen: API reference in ${MPP_DOCS_OUTPUT}/html"
  VERBATIM)
add_custom_target(docs DEPENDS "${MPP_DOCS_OUTPUT}/docs.stamp")
