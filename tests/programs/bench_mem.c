/* Memory for scripts/bench-checkpoint: MIB MiB of anonymous memory, filled with
 * pseudo-random bytes (incompressible), or with every other page written as zeros
 * ("halfzero": the zero pages are present, not the shared zero page), then it waits.
 * "cow" fills it with random bytes as well, then forks 3 children that leave it
 * untouched: 4 processes share every page copy-on-write.
 *
 *   bench_mem MIB random|halfzero|cow DIR
 *
 * It prints "checksum 0 HEX" once the memory is filled, then, each time the file
 * DIR/check-N appears (N = 1, 2, ...), "checksum N HEX" again: a checksum of the whole
 * buffer, so that a restore is verified by what the process itself reads. In "cow" mode
 * every process of the tree prints its own lines, "checksum N HEX pid P" (P: its pid as
 * it sees it), once the children are forked; a child exits if its parent is gone. */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096
#define COW_CHILDREN 3

static uint64_t checksum(const uint64_t *w, size_t n) {
  /* Four lanes of a multiply-xor hash: fast enough for 1 GiB in well under a second. */
  uint64_t h[4] = {1, 2, 3, 4};
  size_t i = 0;
  for (; i + 4 <= n; i += 4)
    for (int l = 0; l < 4; l++) h[l] = (h[l] ^ w[i + l]) * 0x9e3779b97f4a7c15ull;
  for (; i < n; i++) h[0] = (h[0] ^ w[i]) * 0x9e3779b97f4a7c15ull;
  return h[0] ^ (h[1] << 1) ^ (h[2] << 2) ^ (h[3] << 3);
}

/* One line, one write(2): the processes of a tree share stdout. */
static void report(int n, uint64_t sum, int tree) {
  if (tree)
    printf("checksum %d %016llx pid %d\n", n, (unsigned long long)sum, (int)getpid());
  else
    printf("checksum %d %016llx\n", n, (unsigned long long)sum);
  fflush(stdout);
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: %s MIB random|halfzero|cow DIR\n", argv[0]);
    return 2;
  }
  size_t len = (size_t)atol(argv[1]) << 20;
  int halfzero = strcmp(argv[2], "halfzero") == 0;
  int cow = strcmp(argv[2], "cow") == 0;
  if (!halfzero && !cow && strcmp(argv[2], "random") != 0) {
    fprintf(stderr, "%s: unknown mode %s (random, halfzero or cow)\n", argv[0], argv[2]);
    return 2;
  }
  const char *dir = argv[3];
  uint64_t *mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) {
    perror("mmap");
    return 1;
  }
  /* No transparent huge pages: a restore maps 4 KiB pages, and RSS must compare. */
  madvise(mem, len, MADV_NOHUGEPAGE);
  uint64_t x = 0x2545f4914f6cdd1dull ^ (uint64_t)getpid();
  size_t words = len / 8, per_page = PAGE / 8;
  for (size_t p = 0; p < words / per_page; p++) {
    uint64_t *pg = mem + p * per_page;
    if (halfzero && p % 2 == 1) {
      memset(pg, 0, PAGE); /* present, written, all zero */
      continue;
    }
    for (size_t i = 0; i < per_page; i++) {
      x ^= x << 13;
      x ^= x >> 7;
      x ^= x << 17;
      pg[i] = x;
    }
  }
  pid_t parent = 0; /* in a child of the tree: the pid of the process that forked it */
  if (cow) {
    pid_t self = getpid();
    for (int c = 0; c < COW_CHILDREN; c++) {
      pid_t pid = fork();
      if (pid < 0) {
        perror("fork");
        return 1;
      }
      if (pid == 0) {
        parent = self;
        break;
      }
    }
  }
  report(0, checksum(mem, words), cow);
  char path[4096];
  for (int n = 1;; n++) {
    snprintf(path, sizeof path, "%s/check-%d", dir, n);
    while (access(path, F_OK) != 0) {
      if (parent && getppid() != parent) return 0;
      struct timespec ts = {0, 20 * 1000 * 1000};
      nanosleep(&ts, NULL);
    }
    report(n, checksum(mem, words), cow);
  }
}
