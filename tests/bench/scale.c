/*
 * --scale N,... of the benchmark: the daemon measured at each size.
 * bench-load (the loader) writes N claims into a fresh state directory
 * through the store API, then the bench measures the disk the store
 * takes, the time from fork to "listening on" (the first start after the
 * loader's clean close, then again after a SIGTERM), the daemon's VmRSS
 * and VmHWM, and the keepalive_1 and keepalive_32 levels against that
 * store.  Each directory is removed once measured unless --keep.
 */

#include "config.h"

#include <sys/types.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"

#define BENCH_LOAD_MAX		160000000	/* bench-load's numbers */
#define BENCH_LOAD_PENDING	"1"	/* % of loaded claims pending */

static long	 proc_kb(pid_t, const char *);
static int	 scale_load(struct bench *, struct scale *);
static int	 scale_disk(struct bench *, struct scale *);
static int	 scale_file_cmp(const void *, const void *);
static int	 scale_levels(struct bench *, struct scale *);
static int	 scale_one(struct bench *, struct scale *);
static void	 scale_forget(struct bench *);
static void	 scale_print(struct bench *);

/* Return a "Name:" figure in kB of /proc/PID/status, or -1. */
static long
proc_kb(pid_t pid, const char *name)
{
	char	 path[64], line[256];
	size_t	 len = strlen(name);
	long	 kb = -1;
	FILE	*f;

	snprintf(path, sizeof path, "/proc/%ld/status", (long)pid);
	if ((f = fopen(path, "r")) == NULL)
		return (-1);
	while (fgets(line, sizeof line, f) != NULL) {
		if (strncmp(line, name, len) == 0) {
			kb = strtol(line + len, NULL, 10);
			break;
		}
	}
	fclose(f);
	return (kb);
}

/* Parse --scale N[,N...] into b->scale. */
int
scale_parse(struct bench *b, const char *arg)
{
	const char		*p = arg;
	char			*end;
	unsigned long long	 n;

	for (;;) {
		errno = 0;
		n = strtoull(p, &end, 10);
		if (errno != 0 || end == p || *p == '-' || n < 1 ||
		    n > BENCH_LOAD_MAX || (*end != ',' && *end != '\0') ||
		    b->nscale == BENCH_SCALE_MAX) {
			fprintf(stderr, "bench: --scale %s: expected up to %d "
			    "sizes from 1 to %d, comma separated\n", arg,
			    BENCH_SCALE_MAX, BENCH_LOAD_MAX);
			return (-1);
		}
		memset(&b->scale[b->nscale], 0, sizeof b->scale[0]);
		b->scale[b->nscale++].n = n;
		if (*end == '\0')
			return (0);
		p = end + 1;
	}
}

/* Return the path of bench-load next to our own binary. */
char *
scale_loader(const char *argv0)
{
	char	 self[PATH_MAX], *slash, *path;
	ssize_t	 n;

	n = readlink("/proc/self/exe", self, sizeof self - 1);
	if (n > 0)
		self[n] = '\0';
	else if (strlen(argv0) < sizeof self)
		snprintf(self, sizeof self, "%s", argv0);
	else
		self[0] = '\0';
	if ((slash = strrchr(self, '/')) == NULL)
		return (xstrdup("bench-load"));
	*slash = '\0';
	xasprintf(&path, "%s/bench-load", self);
	return (path);
}

/* Run bench-load to put sc->n claims in the new state directory. */
static int
scale_load(struct bench *b, struct scale *sc)
{
	char		*state, *key, num[32];
	uint64_t	 t0;
	pid_t		 pid;
	int		 status;

	xasprintf(&state, "%s/state", b->dir);
	xasprintf(&key, "%s/state/hash.key", b->dir);
	snprintf(num, sizeof num, "%" PRIu64, sc->n);
	fflush(stdout);
	fflush(stderr);
	t0 = now_ns();
	switch (pid = fork()) {
	case -1:
		fprintf(stderr, "bench: fork: %s\n", strerror(errno));
		free(state);
		free(key);
		return (-1);
	case 0:
		signal(SIGPIPE, SIG_DFL);
		execl(b->loader_path, b->loader_path, "-p",
		    BENCH_LOAD_PENDING, state, key, num, (char *)NULL);
		fprintf(stderr, "bench: exec %s: %s\n", b->loader_path,
		    strerror(errno));
		_exit(127);
	}
	free(state);
	free(key);
	while (waitpid(pid, &status, 0) == -1) {
		if (errno != EINTR) {
			fprintf(stderr, "bench: waitpid: %s\n",
			    strerror(errno));
			return (-1);
		}
	}
	sc->load_s = (now_ns() - t0) / 1e9;
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		fprintf(stderr, "bench: %s failed (status 0x%x)\n",
		    b->loader_path, status);
		return (-1);
	}
	return (0);
}

/*
 * Add up the state directory: the *.db files (each noted), the log files
 * and everything, by size and by blocks allocated.
 */
static int
scale_disk(struct bench *b, struct scale *sc)
{
	struct scale_file	*f;
	struct dirent		*de;
	struct stat		 sb;
	char			*state, *path;
	size_t			 len;
	DIR			*d;

	xasprintf(&state, "%s/state", b->dir);
	if ((d = opendir(state)) == NULL) {
		fprintf(stderr, "bench: %s: %s\n", state, strerror(errno));
		free(state);
		return (-1);
	}
	while ((de = readdir(d)) != NULL) {
		xasprintf(&path, "%s/%s", state, de->d_name);
		if (lstat(path, &sb) != 0 || !S_ISREG(sb.st_mode)) {
			free(path);
			continue;
		}
		free(path);
		sc->dir_size += (uint64_t)sb.st_size;
		sc->dir_alloc += (uint64_t)sb.st_blocks * 512;
		len = strlen(de->d_name);
		if (strncmp(de->d_name, "log.", 4) == 0) {
			sc->log_size += (uint64_t)sb.st_size;
			sc->log_alloc += (uint64_t)sb.st_blocks * 512;
		}
		if (len < 4 || strcmp(de->d_name + len - 3, ".db") != 0)
			continue;
		sc->db_size += (uint64_t)sb.st_size;
		sc->db_alloc += (uint64_t)sb.st_blocks * 512;
		if (sc->nfiles == BENCH_SCALE_FILES ||
		    len >= sizeof sc->files[0].name)
			continue;
		f = &sc->files[sc->nfiles++];
		memcpy(f->name, de->d_name, len + 1);	/* len < sizeof */
		f->size = (uint64_t)sb.st_size;
		f->alloc = (uint64_t)sb.st_blocks * 512;
	}
	closedir(d);
	free(state);
	qsort(sc->files, sc->nfiles, sizeof sc->files[0], scale_file_cmp);
	return (0);
}

/* Order files by name. */
static int
scale_file_cmp(const void *a, const void *b)
{
	return (strcmp(((const struct scale_file *)a)->name,
	    ((const struct scale_file *)b)->name));
}

/* Fill the pool, then run keepalive_1 and keepalive_32 of the claim mix. */
static int
scale_levels(struct bench *b, struct scale *sc)
{
	struct run	 run;
	struct result	*res;
	size_t		 i;

	if (bench_pool(b) != 0)
		return (-1);
	for (i = 0; i < NLEVELS; i++) {
		if (strcmp(levels[i].name, "keepalive_1") == 0)
			res = &sc->ka1;
		else if (strcmp(levels[i].name, "keepalive_32") == 0)
			res = &sc->ka32;
		else
			continue;
		if (level_run(b, i, &run, res) != 0)
			return (-1);
	}
	return (0);
}

/*
 * One size: load, measure the disk, start, stop, start again, run the
 * levels, read the memory figures and stop.
 */
static int
scale_one(struct bench *b, struct scale *sc)
{
	uint64_t	 t0;

	printf("\nbench: scale %" PRIu64 " claims\n", sc->n);
	if (daemon_setup(b) != 0)
		return (-1);
	b->daemon_pid = -1;
	if (scale_load(b, sc) != 0 || scale_disk(b, sc) != 0)
		return (-1);
	printf("bench: loaded in %.1f s (%.0f/s); *.db %.1f bytes/claim "
	    "(%.1f allocated), log %.1f MB\n", sc->load_s, sc->n /
	    sc->load_s, (double)sc->db_size / sc->n, (double)sc->db_alloc /
	    sc->n, sc->log_size / 1e6);

	if (daemon_spawn(b) != 0)
		return (-1);
	sc->start_s = b->start_s;
	t0 = now_ns();
	if (daemon_stop(b) != 0)
		return (-1);
	sc->stop_s = (now_ns() - t0) / 1e9;
	if (daemon_spawn(b) != 0)
		return (-1);
	sc->restart_s = b->start_s;
	sc->rss_kb_start = proc_kb(b->daemon_pid, "VmRSS:");
	printf("bench: start %.3f s, stop %.3f s, restart %.3f s; "
	    "VmRSS %ld kB\n", sc->start_s, sc->stop_s, sc->restart_s,
	    sc->rss_kb_start);

	if (scale_levels(b, sc) != 0)
		return (-1);
	sc->rss_kb_after = proc_kb(b->daemon_pid, "VmRSS:");
	sc->hwm_kb = proc_kb(b->daemon_pid, "VmHWM:");
	printf("bench: after the levels VmRSS %ld kB, VmHWM %ld kB\n",
	    sc->rss_kb_after, sc->hwm_kb);
	if (daemon_stop(b) != 0)
		return (-1);
	sc->done = 1;
	scale_forget(b);
	return (0);
}

/* Remove (or keep) the directory of one size and forget its tokens. */
static void
scale_forget(struct bench *b)
{
	if (b->keep)
		printf("bench: kept %s\n", b->dir);
	else
		nftw(b->dir, remove_cb, 16, FTW_DEPTH | FTW_PHYS);
	free(b->dir);
	b->dir = NULL;
	free(b->token);
	b->token = NULL;
	free(b->log_token);
	b->log_token = NULL;
	b->daemon_pid = 0;
}

/* Every size of --scale, then the tables. */
int
bench_scale(struct bench *b)
{
	size_t	 i;
	int	 rv = 0;

	printf("bench: scale %zu size(s) with %s; %.1f s per level after a "
	    "%.1f s warm-up\n", b->nscale, b->loader_path, b->duration,
	    b->warmup);
	for (i = 0; i < b->nscale && rv == 0; i++) {
		if (b->interrupted || scale_one(b, &b->scale[i]) != 0)
			rv = -1;
	}
	scale_print(b);
	return (rv);
}

/* Print the figures of every measured size as tables. */
static void
scale_print(struct bench *b)
{
	struct scale	*sc;
	size_t		 i, j;

	printf("\n%10s %8s %8s %8s %8s %8s %8s %8s %8s %8s\n", "claims",
	    "load/s", "db B/cl", "alloc", "log MB", "start s", "restrt s",
	    "rss kB", "after kB", "hwm kB");
	for (i = 0; i < b->nscale; i++) {
		sc = &b->scale[i];
		if (!sc->done)
			continue;
		printf("%10" PRIu64 " %8.0f %8.1f %8.1f %8.1f %8.3f %8.3f %8ld "
		    "%8ld %8ld\n", sc->n, sc->n / sc->load_s,
		    (double)sc->db_size / sc->n, (double)sc->db_alloc / sc->n,
		    sc->log_size / 1e6, sc->start_s, sc->restart_s,
		    sc->rss_kb_start, sc->rss_kb_after, sc->hwm_kb);
	}
	printf("\n%10s %-13s %9s %10s %9s %9s %9s\n", "claims", "level",
	    "requests", "req/s", "p50 ms", "p99 ms", "p99.9 ms");
	for (i = 0; i < b->nscale; i++) {
		sc = &b->scale[i];
		if (!sc->done)
			continue;
		printf("%10" PRIu64 " %-13s %9" PRIu64 " %10.1f %9.3f %9.3f "
		    "%9.3f\n", sc->n, "keepalive_1", sc->ka1.requests,
		    sc->ka1.rps, sc->ka1.p50, sc->ka1.p99, sc->ka1.p999);
		printf("%10" PRIu64 " %-13s %9" PRIu64 " %10.1f %9.3f %9.3f "
		    "%9.3f\n", sc->n, "keepalive_32", sc->ka32.requests,
		    sc->ka32.rps, sc->ka32.p50, sc->ka32.p99, sc->ka32.p999);
	}
	printf("\n%10s %-18s %14s %14s %9s\n", "claims", "file", "bytes",
	    "allocated", "B/claim");
	for (i = 0; i < b->nscale; i++) {
		sc = &b->scale[i];
		for (j = 0; sc->done && j < sc->nfiles; j++)
			printf("%10" PRIu64 " %-18s %14" PRIu64 " %14" PRIu64
			    " %9.1f\n", sc->n, sc->files[j].name,
			    sc->files[j].size, sc->files[j].alloc,
			    (double)sc->files[j].size / sc->n);
	}
}

/* Print the "scale" member of the JSON line. */
void
scale_json(struct bench *b)
{
	struct scale	*sc;
	size_t		 i, j;
	int		 first = 1;

	printf(",\"scale\":{");
	for (i = 0; i < b->nscale; i++) {
		sc = &b->scale[i];
		if (!sc->done)
			continue;
		printf("%s\"%" PRIu64 "\":{\"claims\":%" PRIu64 ","
		    "\"load_s\":%.3f,\"load_per_s\":%.0f,"
		    "\"db_bytes\":%" PRIu64 ",\"db_alloc_bytes\":%" PRIu64 ","
		    "\"db_bytes_per_claim\":%.1f,"
		    "\"db_alloc_bytes_per_claim\":%.1f,"
		    "\"log_bytes\":%" PRIu64 ",\"log_alloc_bytes\":%" PRIu64
		    ",\"dir_bytes\":%" PRIu64 ",\"dir_alloc_bytes\":%" PRIu64
		    ",\"start_s\":%.3f,\"stop_s\":%.3f,\"restart_s\":%.3f,"
		    "\"rss_kb_start\":%ld,\"rss_kb_after\":%ld,\"hwm_kb\":%ld,"
		    "\"files\":{", first ? "" : ",", sc->n, sc->n, sc->load_s,
		    sc->n / sc->load_s, sc->db_size, sc->db_alloc,
		    (double)sc->db_size / sc->n, (double)sc->db_alloc / sc->n,
		    sc->log_size, sc->log_alloc, sc->dir_size, sc->dir_alloc,
		    sc->start_s, sc->stop_s, sc->restart_s, sc->rss_kb_start,
		    sc->rss_kb_after, sc->hwm_kb);
		for (j = 0; j < sc->nfiles; j++)
			printf("%s\"%s\":%" PRIu64, j == 0 ? "" : ",",
			    sc->files[j].name, sc->files[j].size);
		printf("},");
		json_result("keepalive_1", &sc->ka1, 1);
		json_result("keepalive_32", &sc->ka32, 0);
		printf("}");
		first = 0;
	}
	printf("}");
}
