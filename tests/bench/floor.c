/* The raw floor of a /proc scan, in CPU time: for every process, read /proc/PID/stat and
 * /proc/PID/statm and stat() /proc/PID/fd — nothing else — ITER times (argv[1], default 20).
 * Prints: processes, CPU µs per pass (user+sys, getrusage), wall µs per pass.
 * Built and run by tests/bench/sidecar-vs-peers.sh (cc -O2). */
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static double us(struct timeval t) { return t.tv_sec * 1e6 + t.tv_usec; }

static long pass(void) {
    char path[64], buf[1024];
    long n = 0, sink = 0;
    DIR *d = opendir("/proc");
    struct dirent *e;
    if (!d) return 0;
    while ((e = readdir(d))) {
        if (e->d_name[0] < '1' || e->d_name[0] > '9') continue;
        const char *f[] = {"stat", "statm"};
        for (int i = 0; i < 2; i++) {
            snprintf(path, sizeof path, "/proc/%s/%s", e->d_name, f[i]);
            int fd = open(path, O_RDONLY | O_CLOEXEC);
            if (fd < 0) continue;
            ssize_t r;
            while ((r = read(fd, buf, sizeof buf)) > 0) sink += r;
            close(fd);
        }
        struct stat st;
        snprintf(path, sizeof path, "/proc/%s/fd", e->d_name);
        if (stat(path, &st) == 0) sink += st.st_size;
        n++;
    }
    closedir(d);
    return sink >= 0 ? n : 0;
}

int main(int argc, char **argv) {
    int iter = argc > 1 ? atoi(argv[1]) : 20;
    long procs = pass(); /* warm-up */
    struct rusage a, b;
    struct timespec w0, w1;
    getrusage(RUSAGE_SELF, &a);
    clock_gettime(CLOCK_MONOTONIC, &w0);
    for (int i = 0; i < iter; i++) procs = pass();
    clock_gettime(CLOCK_MONOTONIC, &w1);
    getrusage(RUSAGE_SELF, &b);
    double cpu = (us(b.ru_utime) - us(a.ru_utime) + us(b.ru_stime) - us(a.ru_stime)) / iter;
    double wall = ((w1.tv_sec - w0.tv_sec) * 1e6 + (w1.tv_nsec - w0.tv_nsec) / 1e3) / iter;
    printf("%ld %.1f %.1f\n", procs, cpu, wall);
    return 0;
}
