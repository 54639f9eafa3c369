// Test helper: runs a program with io_uring_setup(2) made to fail, the way
// a container runtime's seccomp profile or kernel.io_uring_disabled=2 does.
//
//   block_io_uring EPERM|ENOSYS PROGRAM [ARG...]
//       execs PROGRAM under the filter;
//   block_io_uring EPERM|ENOSYS --probe
//       calls io_uring_setup under the filter and prints the errno.
//
// The filter is a seccomp-BPF program installed with no_new_privs, so it
// needs no privilege and is inherited across execve by the program and by
// anything it starts. Only io_uring_setup is refused: without a ring,
// io_uring_enter and io_uring_register have nothing to act on.
//
// Exit status: the program's own after exec; 0 after --probe; 125 when the
// kernel refuses the filter (no seccomp); 126 on a usage error; 127 when
// exec fails.
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/io_uring.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdio>
#include <cstring>

namespace {

#if defined(__x86_64__)
constexpr unsigned kNativeArch = AUDIT_ARCH_X86_64;
#elif defined(__aarch64__)
constexpr unsigned kNativeArch = AUDIT_ARCH_AARCH64;
#elif defined(__riscv) && __riscv_xlen == 64
constexpr unsigned kNativeArch = AUDIT_ARCH_RISCV64;
#else
#error "block_io_uring: add this architecture's AUDIT_ARCH_ value"
#endif

// Returns 0, or the errno of the failed prctl / seccomp call.
int InstallFilter(int refused_errno) {
  sock_filter code[] = {
      // Syscalls of another ABI (e.g. 32-bit) have other numbers: allow them.
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, arch)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, kNativeArch, 1, 0),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 0, 1),
      BPF_STMT(BPF_RET | BPF_K,
               SECCOMP_RET_ERRNO | (static_cast<unsigned>(refused_errno) & SECCOMP_RET_DATA)),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  sock_fprog prog{};
  prog.len = static_cast<unsigned short>(sizeof(code) / sizeof(code[0]));
  prog.filter = code;
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return errno;
  if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) != 0) {
    return errno;
  }
  return 0;
}

int Usage() {
  fprintf(stderr,
          "usage: block_io_uring EPERM|ENOSYS PROGRAM [ARG...]\n"
          "       block_io_uring EPERM|ENOSYS --probe\n");
  return 126;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) return Usage();
  int refused;
  if (strcmp(argv[1], "EPERM") == 0) {
    refused = EPERM;
  } else if (strcmp(argv[1], "ENOSYS") == 0) {
    refused = ENOSYS;
  } else {
    return Usage();
  }
  if (int err = InstallFilter(refused); err != 0) {
    fprintf(stderr, "block_io_uring: cannot install the seccomp filter: %s\n", strerror(err));
    return 125;
  }
  if (strcmp(argv[2], "--probe") == 0) {
    io_uring_params params{};
    long ret = syscall(__NR_io_uring_setup, 4, &params);
    if (ret >= 0) {
      close(static_cast<int>(ret));
      printf("io_uring_setup succeeded\n");
    } else {
      printf("io_uring_setup failed: errno %d\n", errno);
    }
    return 0;
  }
  execv(argv[2], argv + 2);
  fprintf(stderr, "block_io_uring: exec %s: %s\n", argv[2], strerror(errno));
  return 127;
}
