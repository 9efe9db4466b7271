# CUDA helpers of CMakeLists.txt: a build folder that does not stay poisoned by an earlier configure,
# a clear error when nvcc is missing, the toolkit root handed to torch's CUDA finder, and the default
# architecture list. What they do and the errors they print: docs/ops.md, "GPU build".

# Cache entries written by find_package(Torch) and torch's CUDA finders (FindCUDA, FindCUDAToolkit,
# cuDNN, NVTX). TORCH_CUDA_ARCH_LIST is the user's setting and is kept.
set(_XTC_TORCH_CACHE_REGEX "^(Torch|Caffe2|c10|kineto|CUDA|CUDAToolkit|CUDNN|CUDNN|nvtx3|NVTX|TORCH|CAFFE2|LIBNVTOOLSEXT)")

# A build folder is kept between builds (pyproject.toml: build-dir = "build/{wheel_tag}"), and with it
# every cache entry of the last configure, failed ones included. Forget torch's and the CUDA finders'
# entries when they were written for another torch (another venv or version), for another nvcc, or by
# a configure that failed: they are recomputed below at the cost of a few seconds.
function(xtc_forget_stale_cache torch_prefix)
  set(_nvcc "")
  if(DEFINED ENV{CUDACXX})
    set(_nvcc "$ENV{CUDACXX}")
  else()
    find_program(_xtc_nvcc_probe nvcc NO_CACHE)
    if(_xtc_nvcc_probe)
      set(_nvcc "${_xtc_nvcc_probe}")
    endif()
  endif()
  set(_stamp "${torch_prefix}|${_nvcc}")
  set(_why "")
  if(DEFINED XTC_CONFIGURE_STAMP AND NOT XTC_CONFIGURE_STAMP STREQUAL _stamp)
    set(_why "torch or nvcc changed (${XTC_CONFIGURE_STAMP} -> ${_stamp})")
  elseif(DEFINED XTC_CONFIGURE_OK AND NOT XTC_CONFIGURE_OK)
    set(_why "the previous configure of this build folder failed")
  elseif(NOT DEFINED XTC_CONFIGURE_OK AND (DEFINED Torch_DIR OR DEFINED CUDA_TOOLKIT_ROOT_DIR))
    set(_why "the cache was written by an older CMakeLists.txt")
  endif()
  if(_why)
    get_property(_entries DIRECTORY PROPERTY CACHE_VARIABLES)
    set(_n 0)
    foreach(_entry IN LISTS _entries)
      if(_entry MATCHES "${_XTC_TORCH_CACHE_REGEX}" AND NOT _entry STREQUAL "TORCH_CUDA_ARCH_LIST")
        unset(${_entry} CACHE)
        math(EXPR _n "${_n} + 1")
      endif()
    endforeach()
    # A CUDA compiler that was not found, or no longer exists, is searched again.
    if(DEFINED CMAKE_CUDA_COMPILER AND (NOT CMAKE_CUDA_COMPILER OR
       (IS_ABSOLUTE "${CMAKE_CUDA_COMPILER}" AND NOT EXISTS "${CMAKE_CUDA_COMPILER}")))
      unset(CMAKE_CUDA_COMPILER CACHE)
    endif()
    message(STATUS "xtc_ext: cleared ${_n} cached torch/CUDA entries: ${_why}")
  endif()
  set(XTC_CONFIGURE_STAMP "${_stamp}" CACHE INTERNAL "torch prefix and nvcc of the last configure")
  # Set to ON at the very end of CMakeLists.txt: a configure that stops before stays marked failed.
  set(XTC_CONFIGURE_OK OFF CACHE INTERNAL "the last configure of this folder completed")
endfunction()

# enable_language(CUDA) with a clear error when there is no nvcc, then the toolkit root for torch's
# CUDA finder (run by find_package(Torch)), which otherwise derives it from the first `nvcc` on PATH and
# fails when that is a wrapper script outside the toolkit. A macro: enable_language needs file scope.
macro(xtc_enable_cuda)
  if(DEFINED CMAKE_CUDA_COMPILER AND NOT CMAKE_CUDA_COMPILER)
    unset(CMAKE_CUDA_COMPILER CACHE)
  endif()
  include(CheckLanguage)
  check_language(CUDA)
  if(NOT CMAKE_CUDA_COMPILER)
    unset(CMAKE_CUDA_COMPILER CACHE)  # search again next time
    if(XTC_WITH_CUDA)
      string(REGEX MATCH "^[0-9]+" _xtc_major "${XTC_TORCH_CUDA_VERSION}")
      message(FATAL_ERROR
        "xtc_ext: no CUDA compiler found, but the CUDA kernels are to be built: the torch of "
        "${Python_EXECUTABLE} (${XTC_TORCH_VERSION}) is a CUDA ${XTC_TORCH_CUDA_VERSION} build. Either install "
        "a CUDA ${_xtc_major}.x toolkit and put its nvcc on PATH (or set CUDACXX=/path/to/nvcc), or build "
        "CPU-only: pip install --no-build-isolation -C cmake.define.XTC_WITH_CUDA=OFF . "
        "(plain cmake: -DXTC_WITH_CUDA=OFF). See docs/ops.md, \"GPU build\".")
    else()
      message(FATAL_ERROR
        "xtc_ext: XTC_CUDA_COMPILE_CHECK=ON needs a CUDA compiler: put nvcc on PATH or set CUDACXX.")
    endif()
  endif()
  enable_language(CUDA)
  set(CUDA_TOOLKIT_ROOT_DIR "${CMAKE_CUDA_COMPILER_TOOLKIT_ROOT}" CACHE PATH
      "CUDA toolkit for torch's CUDA finder: the root of CMAKE_CUDA_COMPILER's toolkit (set by CMakeLists.txt)" FORCE)
endmacro()

# The default architectures in CUDA_ARCHITECTURES form: every architecture this nvcc can compile
# (nvcc --list-gpu-code) from the oldest to the newest that the installed torch was compiled for
# (`torch_flags`, torch._C._cuda_getArchFlags(), e.g. "sm_75 sm_80 sm_86 sm_90 sm_100 sm_120"), so also
# those torch runs through a related SASS (sm_89 on sm_86's); SASS for each, and PTX for the newest,
# which the driver JIT-compiles on GPUs newer than all of them. Without torch's list (a CPU torch, for
# the compile check): every architecture nvcc supports.
function(xtc_default_cuda_archs torch_flags out)
  execute_process(COMMAND "${CMAKE_CUDA_COMPILER}" --list-gpu-code
                  OUTPUT_VARIABLE _codes RESULT_VARIABLE _rc ERROR_QUIET)
  string(REGEX MATCHALL "sm_[0-9]+" _nvcc_sms "${_codes}")
  string(REGEX MATCHALL "sm_[0-9]+" _torch_sms "${torch_flags}")
  list(TRANSFORM _nvcc_sms REPLACE "sm_" "")
  list(TRANSFORM _torch_sms REPLACE "sm_" "")
  list(SORT _torch_sms COMPARE NATURAL)
  set(_lo 0)
  set(_hi 100000)
  if(_torch_sms)
    list(GET _torch_sms 0 _lo)
    list(GET _torch_sms -1 _hi)
  endif()
  set(_keep "")
  foreach(_num IN LISTS _nvcc_sms)
    if(_num GREATER_EQUAL _lo AND _num LESS_EQUAL _hi)
      list(APPEND _keep "${_num}")
    endif()
  endforeach()
  list(REMOVE_DUPLICATES _keep)
  list(SORT _keep COMPARE NATURAL)
  if(NOT _keep)
    set(${out} "" PARENT_SCOPE)
    return()
  endif()
  list(POP_BACK _keep _newest)
  list(TRANSFORM _keep APPEND "-real")
  list(APPEND _keep "${_newest}")
  set(${out} "${_keep}" PARENT_SCOPE)
endfunction()

# TORCH_CUDA_ARCH_LIST (e.g. "8.0;9.0+PTX" or "8.0 9.0") in CUDA_ARCHITECTURES form: "X.Y" gives SASS
# only ("XY-real"), "X.Y+PTX" SASS and PTX ("XY").
function(xtc_parse_torch_arch_list spec out)
  string(REPLACE " " ";" spec "${spec}")
  set(_archs "")
  foreach(_arch IN LISTS spec)
    if(_arch MATCHES "^([0-9]+)\\.([0-9]+)([af]?)(\\+PTX)?$")
      if(CMAKE_MATCH_4)
        list(APPEND _archs "${CMAKE_MATCH_1}${CMAKE_MATCH_2}${CMAKE_MATCH_3}")
      else()
        list(APPEND _archs "${CMAKE_MATCH_1}${CMAKE_MATCH_2}${CMAKE_MATCH_3}-real")
      endif()
    elseif(NOT _arch STREQUAL "")
      message(WARNING "xtc_ext: ignoring TORCH_CUDA_ARCH_LIST entry '${_arch}' (expected e.g. 9.0 or 9.0+PTX)")
    endif()
  endforeach()
  list(REMOVE_DUPLICATES _archs)
  set(${out} "${_archs}" PARENT_SCOPE)
endfunction()
