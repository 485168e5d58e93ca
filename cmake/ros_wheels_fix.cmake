# Used only when building against the ROS 2 Jazzy *pip wheels* (make setup). A normal apt/colcon ROS 2
# install never needs it. The wheels' exported CMake targets carry the include dirs of the machine they
# were built on (/opt/python/cp3XX-...); rewrite those imported targets to this interpreter's headers.
# Passed with -DCMAKE_PROJECT_INCLUDE=..., so CMakeLists.txt stays a plain ament_cmake file.
function(_ros_wheels_fix_py_includes)
  if(NOT Python3_INCLUDE_DIRS OR NOT Python3_NumPy_INCLUDE_DIRS)
    find_package(Python3 REQUIRED COMPONENTS Interpreter Development NumPy)
  endif()
  get_property(_targets DIRECTORY "${CMAKE_SOURCE_DIR}" PROPERTY IMPORTED_TARGETS)
  foreach(_t IN LISTS _targets)
    get_target_property(_inc ${_t} INTERFACE_INCLUDE_DIRECTORIES)
    if(_inc MATCHES "^/opt/python/cp")
      set_target_properties(${_t} PROPERTIES
        INTERFACE_INCLUDE_DIRECTORIES "${Python3_INCLUDE_DIRS};${Python3_NumPy_INCLUDE_DIRS}")
    endif()
  endforeach()
endfunction()
cmake_language(DEFER DIRECTORY "${CMAKE_SOURCE_DIR}" CALL _ros_wheels_fix_py_includes)
