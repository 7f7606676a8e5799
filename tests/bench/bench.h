/*
 * What the files of the benchmark share: the run and its figures, the
 * bench's state and the functions that more than one file calls.
 * bench.c is the program, logs.c the log stream, scale.c --scale.
 */
#ifndef BENCH_H
#define BENCH_H

#include <sys/types.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <ftw.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define BENCH_SCALE_MAX		16	/* sizes in one --scale */
#define BENCH_SCALE_FILES	24	/* files of a state directory shown */
#define BENCH_BATCH		1000	/* log events per request */
#define NLEVELS			5	/* entries of levels[] */

enum run_mode {
	RUN_MIX,	/* timed: the claim mix */
	RUN_FILL,	/* counted: fresh claims stored in run->sink */
	RUN_LOG		/* counted: the log-stream batches, one connection */
};

enum run_phase {
	PHASE_WARMUP,
	PHASE_MEASURE,
	PHASE_DRAIN
};

struct claim {
	char	number[16];	/* +1AAAEEELLLL */
	char	user[32];	/* auth0|24 hex digits */
	char	device[24];	/* dev_ and 16 hex digits */
};

struct target {
	const char		*name;		/* "daemon", "baseline" */
	struct sockaddr_storage	 ss;
	socklen_t		 sslen;
	char			*claim_head;	/* request line and headers */
	char			*log_head;
};

struct lat {
	uint64_t	*v;		/* ns */
	size_t		 n;
	size_t		 cap;
};

struct result {
	int		 valid;
	uint64_t	 requests;
	double		 seconds;
	double		 rps;
	double		 p50;		/* ms */
	double		 p99;
	double		 p999;
	double		 cpu;		/* % of one core used by the bench */
};

struct run {
	struct bench	*b;
	struct target	*t;
	const char	*name;
	enum run_mode	 mode;
	enum run_phase	 phase;
	int		 newconn;	/* a new connection per request */
	int		 baseline;	/* every answer is 200 reserved */
	size_t		 nconns;
	struct conn	*conns;
	size_t		 busy;		/* requests outstanding */
	size_t		 limit;		/* counted runs: requests to send */
	size_t		 issued;
	struct claim	*sink;		/* RUN_FILL: the claims made */
	uint64_t	 t0;		/* ns, start of the window */
	uint64_t	 t1;		/* ns, end of the window */
	uint64_t	 cpu0;		/* us of our CPU time at t0 */
	uint64_t	 cpu1;		/* at t1 */
	uint64_t	 done;		/* answers inside the window */
	struct lat	 lat;
	struct event	*timer;
	int		 failed;	/* a connection failed: abort */
};

/* One file of a state directory. */
struct scale_file {
	char		 name[32];
	uint64_t	 size;		/* st_size */
	uint64_t	 alloc;		/* st_blocks * 512 */
};

/* The figures at one size (--scale). */
struct scale {
	uint64_t		 n;		/* claims loaded */
	int			 done;		/* every figure is in */
	double			 load_s;
	uint64_t		 db_size;	/* *.db */
	uint64_t		 db_alloc;
	uint64_t		 log_size;	/* log.* */
	uint64_t		 log_alloc;
	uint64_t		 dir_size;	/* everything */
	uint64_t		 dir_alloc;
	struct scale_file	 files[BENCH_SCALE_FILES];	/* *.db */
	size_t			 nfiles;
	double			 start_s;	/* after the loader's close */
	double			 stop_s;	/* SIGTERM to exit */
	double			 restart_s;	/* after a SIGTERM */
	long			 rss_kb_start;	/* after the restart */
	long			 rss_kb_after;	/* after the levels */
	long			 hwm_kb;
	struct result		 ka1;
	struct result		 ka32;
};

/* A load level. */
struct level {
	const char	*name;
	size_t		 conns;
	int		 newconn;
};

struct bench {
	struct event_base	*base;
	struct event		*sigint_ev;
	struct event		*sigterm_ev;
	int			 interrupted;

	/* Options. */
	const char		*daemon_path;
	const char		*target_arg;
	const char		*token_file;
	const char		*log_token_file;
	int			 baseline;
	int			 keep;
	FILE			*record;	/* --record: acknowledged claims */
	int			 quick;
	long long		 threads;	/* the daemon's; 0: its default */
	double			 duration;	/* s */
	double			 warmup;	/* s */
	size_t			 batches;
	size_t			 pool_size;
	const char		*loader_path;
	struct scale		 scale[BENCH_SCALE_MAX];
	size_t			 nscale;
	int			 start_timeout;	/* ms */
	double			 start_s;	/* of the last start */

	/* The processes we started and their directory. */
	char			*dir;
	pid_t			 daemon_pid;
	pid_t			 baseline_pid;
	int			 lifeline;	/* its EOF stops the baseline */

	struct target		 daemon;
	struct target		 base_srv;
	char			*token;
	char			*log_token;

	/* Generators. */
	uint64_t		 rng;
	char			 runid[9];	/* 8 hex digits */
	unsigned long		 rundigits;	/* the same, 8 decimal digits */
	uint64_t		 next_number;
	uint64_t		 next_user;
	uint64_t		 next_log;
	struct claim		*pool;
	size_t			 npool;

	/* Log stream. */
	char			**bodies;
	size_t			*bodylens;
	uint64_t		 ls_received;
	uint64_t		 ls_applied;
	uint64_t		 ls_duplicates;
	uint64_t		 ls_ignored;
	uint64_t		 ls_rejected;

	/* Results. */
	struct result		 dres[NLEVELS];	/* per level, the daemon */
	struct result		 bres[NLEVELS];	/* the baseline */
	struct result		 ls;		/* the log stream */
	struct claim		*reserved;	/* for the log stream */

	uint64_t		 mismatches;
	int			 failed;
};

/* bench.c */
extern const struct level levels[];	/* NLEVELS of them */
void		*xmalloc(size_t);
char		*xstrdup(const char *);
int		 xasprintf(char **, const char *, ...)
		    __attribute__((format(printf, 2, 3)));
void		 buf_printf(char **, size_t *, size_t *, const char *, ...)
		    __attribute__((format(printf, 4, 5)));
uint64_t	 now_ns(void);
uint64_t	 rng_next(struct bench *);
void		 make_user(struct bench *, char *, size_t);
int		 remove_cb(const char *, const struct stat *, int,
		    struct FTW *);
int		 daemon_setup(struct bench *);
int		 daemon_spawn(struct bench *);
int		 daemon_alive(struct bench *);
int		 daemon_stop(struct bench *);
int		 run_go(struct run *, struct result *);
int		 level_run(struct bench *, size_t, struct run *,
		     struct result *);
void		 print_result(const char *, const char *, struct result *);
void		 json_result(const char *, struct result *, int);
int		 bench_pool(struct bench *);

/* logs.c */
int		 bench_log_stream(struct bench *);

/* scale.c */
int		 scale_parse(struct bench *, const char *);
char		*scale_loader(const char *);
int		 bench_scale(struct bench *);
void		 scale_json(struct bench *);

#endif
