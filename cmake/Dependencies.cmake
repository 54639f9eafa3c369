# Every dependency comes from a Debian package; nothing is vendored or fetched.

find_package(absl REQUIRED)
find_package(Threads REQUIRED)
find_package(PkgConfig REQUIRED)

# liburing-dev. Only core/ may link it (see core/CMakeLists.txt).
pkg_check_modules(URING REQUIRED IMPORTED_TARGET liburing>=2.3)

# libsimdjson-dev: JSON bodies (the backends' /api/tags and /api/ps).
find_package(simdjson REQUIRED)

# libnghttp2-dev.
pkg_check_modules(NGHTTP2 REQUIRED IMPORTED_TARGET libnghttp2>=1.52)

# node-llhttp ships the generated C sources; compile them as a static library.
set(LLHTTP_SRC_DIR /usr/share/llhttp)
set(LLHTTP_INCLUDE_DIR /usr/share/include/llhttp)
if(NOT EXISTS ${LLHTTP_SRC_DIR}/llhttp.c OR NOT EXISTS ${LLHTTP_INCLUDE_DIR}/llhttp.h)
  message(FATAL_ERROR "llhttp sources not found: apt-get install node-llhttp")
endif()
add_library(llhttp STATIC ${LLHTTP_SRC_DIR}/api.c ${LLHTTP_SRC_DIR}/http.c ${LLHTTP_SRC_DIR}/llhttp.c)
target_include_directories(llhttp SYSTEM PUBLIC ${LLHTTP_INCLUDE_DIR})
set_target_properties(llhttp PROPERTIES C_STANDARD 11 POSITION_INDEPENDENT_CODE ON)
# Strict mode rejects what the lenient build tolerates (bare LF, odd URL bytes).
target_compile_definitions(llhttp PRIVATE LLHTTP_STRICT_MODE=1)
target_compile_options(llhttp PRIVATE -w)

# android-libboringssl-dev: BoringSSL under its own include and library dirs,
# so it never mixes with OpenSSL. Binaries get an rpath to find it at run time.
set(BORINGSSL_INCLUDE_DIR /usr/include/android)
set(BORINGSSL_LIB_DIR /usr/lib/x86_64-linux-gnu/android)
if(NOT EXISTS ${BORINGSSL_LIB_DIR}/libssl.so)
  message(FATAL_ERROR "BoringSSL not found: apt-get install android-libboringssl-dev")
endif()
add_library(boringssl_crypto SHARED IMPORTED)
set_target_properties(boringssl_crypto PROPERTIES
  IMPORTED_LOCATION ${BORINGSSL_LIB_DIR}/libcrypto.so
  INTERFACE_INCLUDE_DIRECTORIES ${BORINGSSL_INCLUDE_DIR})
add_library(boringssl_ssl SHARED IMPORTED)
set_target_properties(boringssl_ssl PROPERTIES
  IMPORTED_LOCATION ${BORINGSSL_LIB_DIR}/libssl.so
  INTERFACE_INCLUDE_DIRECTORIES ${BORINGSSL_INCLUDE_DIR}
  INTERFACE_LINK_LIBRARIES boringssl_crypto)
set(CMAKE_BUILD_RPATH ${BORINGSSL_LIB_DIR})
set(CMAKE_INSTALL_RPATH ${BORINGSSL_LIB_DIR})

if(SLUICE_BUILD_TESTS)
  find_package(GTest REQUIRED)
endif()
if(SLUICE_BUILD_BENCH)
  find_package(benchmark REQUIRED)
endif()
