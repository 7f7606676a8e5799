/*
 * Fill a state directory with N claims through the store API, for the
 * figures at scale of issue 7 (disk per claim, start-up, memory, latency
 * at 1, 10 and 50 million claims).  The API path would take hours for 50
 * million; this writes the same records the daemon writes, straight into
 * the store, in transactions of LOAD_TXN claims.
 *
 * The claims look like production: "auth0|" and 24 hex digits for the user,
 * a distinct +1 number per claim, "dev_" and 16 hex digits for the
 * enrolment.  User and enrolment ids come from a bijective mix of a
 * counter, so they are unique and arrive in random key order, as the
 * HMAC makes the numbers arrive; that is the pessimistic case for btree
 * fill.  The area codes are none of the bench's, so that the new numbers
 * of its claim mix are never already taken.
 *
 * usage: bench-load [-p pending_percent] STATE_DIR HASH_KEY_FILE N
 */
#include "config.h"

#include <sys/types.h>

#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "phoneclaimd.h"

#define LOAD_TXN	10000		/* claims per transaction */
#define LOAD_PROGRESS	1000000		/* claims between progress lines */
#define LOAD_CHECKPOINT	1000000		/* claims between checkpoints */
#define LOAD_PER_AREA	8000000		/* 800 exchanges x 10,000 lines */
#define LOAD_TTL	3600		/* s ahead for pending claims */

/* US area codes, none of them in bench.c's list. */
static const int load_areas[] = { 201, 203, 206, 210, 214, 215, 216, 224,
    248, 301, 303, 310, 313, 314, 347, 402, 410, 412, 414, 469 };
#define LOAD_NAREAS	(sizeof load_areas / sizeof load_areas[0])
#define LOAD_MAX	((uint64_t)LOAD_NAREAS * LOAD_PER_AREA)

static void	 usage(void) __attribute__((noreturn));
static uint64_t	 load_mix(uint64_t);
static double	 load_now(void);
static long	 load_rss_kb(void);
static void	 load_claim(uint64_t, int, int64_t, struct claim *);
static int	 load_batch(struct store *, uint64_t, uint64_t, int, int64_t);

/* Say how to run us and exit 1. */
static void
usage(void)
{
	fprintf(stderr, "usage: bench-load [-p pending_percent] state_dir "
	    "hash_key_file n\n");
	exit(1);
}

/* The splitmix64 finaliser: a bijection of 64-bit integers. */
static uint64_t
load_mix(uint64_t x)
{
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
	return (x ^ (x >> 31));
}

/* Return CLOCK_MONOTONIC in seconds. */
static double
load_now(void)
{
	struct timespec	 ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (ts.tv_sec + ts.tv_nsec / 1e9);
}

/* Return our resident set in kB from /proc, or -1. */
static long
load_rss_kb(void)
{
	char	 line[256];
	long	 kb = -1;
	FILE	*f;

	if ((f = fopen("/proc/self/status", "r")) == NULL)
		return (-1);
	while (fgets(line, sizeof line, f) != NULL) {
		if (sscanf(line, "VmRSS: %ld", &kb) == 1)
			break;
	}
	fclose(f);
	return (kb);
}

/* Make claim i: its number, user, enrolment and state. */
static void
load_claim(uint64_t i, int pending, int64_t now, struct claim *c)
{
	char		 number[16];
	uint64_t	 u = load_mix(i), v = load_mix(i ^ 0x5bd1e995ULL);

	snprintf(number, sizeof number, "+1%d%03d%04d",
	    load_areas[i / LOAD_PER_AREA], (int)(200 + (i / 10000) % 800),
	    (int)(i % 10000));
	memset(c, 0, sizeof *c);
	hash_number(number, c->numkey);
	snprintf(c->user_id, sizeof c->user_id, "auth0|%016" PRIx64 "%08"
	    PRIx32, u, (uint32_t)v);
	snprintf(c->enrol_id, sizeof c->enrol_id, "dev_%016" PRIx64,
	    load_mix(i + 0x9e3779b97f4a7c15ULL));
	memcpy(c->last4, number + strlen(number) - LAST4_LEN, LAST4_LEN);
	c->source = CLAIM_SRC_IMPORT;
	c->since_ms = now * 1000;
	if (pending) {
		c->state = CLAIM_PENDING;
		c->expires = now + LOAD_TTL;
	} else
		c->state = CLAIM_ACTIVE;
}

/* Write claims first to last - 1 in one transaction; 0 or -1. */
static int
load_batch(struct store *st, uint64_t first, uint64_t last, int pct,
    int64_t now)
{
	struct store_txn	*txn;
	struct claim		 c;
	uint64_t		 i;
	int			 r;

	if ((r = store_txn_begin(st, &txn)) != STORE_OK) {
		fprintf(stderr, "bench-load: begin failed (%d)\n", r);
		return (-1);
	}
	for (i = first; i < last; i++) {
		load_claim(i, (int)(load_mix(i ^ 0xa5a5a5a5ULL) % 100) < pct,
		    now, &c);
		if ((r = store_claim_put(txn, &c)) != STORE_OK) {
			fprintf(stderr, "bench-load: claim %" PRIu64 ": put "
			    "failed (%d)\n", i, r);
			store_txn_abort(txn);
			return (-1);
		}
	}
	if ((r = store_txn_commit(txn)) != STORE_OK) {
		fprintf(stderr, "bench-load: commit failed (%d)\n", r);
		return (-1);
	}
	return (0);
}

int
main(int argc, char *argv[])
{
	struct store		*st;
	struct store_counts	 counts;
	unsigned char		 ikey[STORE_INDEX_KEY_LEN];
	char			*cause, *end, check[HASH_CHECK_LEN + 1];
	unsigned long long	 n;
	uint64_t		 done, next;
	double			 t0, t1, tlast;
	int64_t			 now;
	long			 pct = 0;
	int			 ch;

	while ((ch = getopt(argc, argv, "p:")) != -1) {
		switch (ch) {
		case 'p':
			errno = 0;
			pct = strtol(optarg, &end, 10);
			if (errno != 0 || *end != '\0' || pct < 0 || pct > 100)
				usage();
			break;
		default:
			usage();
		}
	}
	argc -= optind;
	argv += optind;
	if (argc != 3)
		usage();
	errno = 0;
	n = strtoull(argv[2], &end, 10);
	if (errno != 0 || *end != '\0' || argv[2][0] == '-' || n > LOAD_MAX) {
		fprintf(stderr, "bench-load: %s: expected 0 to %" PRIu64 "\n",
		    argv[2], LOAD_MAX);
		return (1);
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	log_init(1, LOG_LEVEL_WARNING);

	t0 = load_now();
	/* The key first: the store derives its index key from it. */
	if (hash_init(argv[1], &cause) != 0) {
		fprintf(stderr, "bench-load: %s\n", cause);
		return (1);
	}
	hash_index_key(ikey);
	hash_check(check);
	store_set_keys(ikey, check, argv[1]);
	if ((st = store_open(argv[0], &cause)) == NULL) {
		fprintf(stderr, "bench-load: %s\n", cause);
		return (1);
	}
	printf("bench-load: store opened in %.3f s; %llu claims, %ld%% "
	    "pending, %d per transaction\n", load_now() - t0, n, pct,
	    LOAD_TXN);

	now = (int64_t)time(NULL);
	t0 = tlast = load_now();
	for (done = 0; done < n; done = next) {
		next = done + LOAD_TXN < n ? done + LOAD_TXN : n;
		if (load_batch(st, done, next, (int)pct, now) != 0)
			goto fail;
		if (next % LOAD_CHECKPOINT == 0 &&
		    (store_flush(st) != STORE_OK ||
		    store_checkpoint(st) != STORE_OK)) {
			fprintf(stderr, "bench-load: checkpoint failed\n");
			goto fail;
		}
		if (next % LOAD_PROGRESS == 0) {
			t1 = load_now();
			printf("bench-load: %" PRIu64 " claims, %.1f s, %.0f/s "
			    "(last %d: %.0f/s), rss %ld kB\n", next, t1 - t0,
			    next / (t1 - t0), LOAD_PROGRESS, LOAD_PROGRESS /
			    (t1 - tlast), load_rss_kb());
			tlast = t1;
		}
	}
	if (store_flush(st) != STORE_OK || store_checkpoint(st) != STORE_OK) {
		fprintf(stderr, "bench-load: final flush failed\n");
		goto fail;
	}
	t1 = load_now();
	if (store_count(st, &counts) != STORE_OK)
		goto fail;
	store_close(st);
	hash_free();
	printf("bench-load: %llu claims (%" PRIu64 " in the store, %" PRIu64
	    " pending) in %.3f s: %.0f claims/s, rss %ld kB\n", n,
	    counts.claims, counts.pending, t1 - t0, t1 > t0 ? n / (t1 - t0) :
	    0, load_rss_kb());
	return (0);

fail:
	store_close(st);
	hash_free();
	return (1);
}
