/*
 * What the fuzz targets share: a private directory per process, and a
 * real claim store (Berkeley DB, as the unit tests open it) that is
 * emptied after each input, so that an input behaves the same however
 * many came before it, and a crash found by libFuzzer replays alone.
 */
#include "config.h"

#include <sys/statvfs.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "phoneclaimd.h"
#include "unit.h"
#include "xmalloc.h"

#include "fuzz.h"

/* The dead-letter file rotates at this size, so a long run stays small. */
#define FUZZ_DEADLETTER_MAX	(256 * 1024)
#define FUZZ_PRUNE_BATCH	100000
/* A checkpoint after this many inputs removes the log files behind it. */
#define FUZZ_CHECKPOINT_EVERY	2000

/* The claims of the store, gathered to be checked and deleted. */
struct fuzz_claims {
	struct claim	*list;
	size_t		 n;
	size_t		 size;
	int64_t		 now;
};

static void	fuzz_exit(void);
static int	fuzz_claim_cb(const struct claim *, void *);
static int	fuzz_reset_txn(struct store_txn *, void *);

static char			*fuzz_tmp;
static struct unit_claims	*fuzz_fx;

/*
 * Report a failed property and abort (libFuzzer keeps the input).  On
 * stdout too: run-fuzz closes the target's stderr (close_fd_mask=2), and
 * the run's log should say which property failed.
 */
void
fuzz_fail(const char *file, int line, const char *what)
{
	struct statvfs	sv;
	unsigned long long free_mb = 0;

	/* A full disk fails the store: say so, it is not the input's fault. */
	if (fuzz_tmp != NULL && statvfs(fuzz_tmp, &sv) == 0)
		free_mb = (unsigned long long)sv.f_bavail * sv.f_frsize >> 20;
	printf("%s:%d: property failed: %s (%llu MiB free in %s)\n", file,
	    line, what, free_mb, fuzz_tmp != NULL ? fuzz_tmp : "?");
	fflush(stdout);
	fprintf(stderr, "%s:%d: property failed: %s\n", file, line, what);
	fflush(stderr);
	abort();
}

/* At exit: close the store and remove the directories. */
static void
fuzz_exit(void)
{
	if (fuzz_fx != NULL) {
		deadletter_close();
		unit_claims_close(fuzz_fx);
		fuzz_fx = NULL;
	}
	if (fuzz_tmp != NULL) {
		unit_rmtree(fuzz_tmp);
		free(fuzz_tmp);
		fuzz_tmp = NULL;
	}
}

/* A private directory for this process, removed at exit. */
const char *
fuzz_dir(void)
{
	if (fuzz_tmp == NULL) {
		fuzz_tmp = unit_tmpdir();
		atexit(fuzz_exit);
	}
	return (fuzz_tmp);
}

/*
 * Open the store once: the claim rules (enforce, one user per number),
 * verification on, a dead-letter file, and every log line formatted (the
 * messages quote the input).  run-fuzz closes the target's stderr.
 */
void
fuzz_store(void)
{
	char	*path, *cause;

	if (fuzz_fx != NULL)
		return;
	log_init(1, LOG_LEVEL_DEBUG);
	xasprintf(&path, "%s/dead-letter.jsonl", fuzz_dir());
	if (deadletter_open(path, FUZZ_DEADLETTER_MAX, &cause) != 0) {
		fprintf(stderr, "fuzz: %s\n", cause);
		exit(99);
	}
	free(path);
	fuzz_fx = unit_claims_open();
	verify_init(1);
}

/* Keep one claim. */
static int
fuzz_claim_cb(const struct claim *c, void *arg)
{
	struct fuzz_claims	*fc = arg;

	if (fc->n == fc->size) {
		fc->size = fc->size == 0 ? 16 : fc->size * 2;
		fc->list = xreallocarray(fc->list, fc->size, sizeof *fc->list);
	}
	fc->list[fc->n++] = *c;
	return (0);
}

/*
 * Check invariant I1 over the whole store (claims come in number order,
 * so the holders of one number are neighbours), then delete every claim,
 * waiting verification and seen log id.
 */
static int
fuzz_reset_txn(struct store_txn *txn, void *arg)
{
	struct fuzz_claims	*fc = arg;
	struct claim		*c;
	char			 user[USER_ID_MAX + 1];
	int64_t			 queued;
	size_t			 i, live = 0, pruned;
	int			 rv, reasons;

	fc->n = 0;
	if ((rv = store_claims_all(txn, NULL, fuzz_claim_cb, fc)) != STORE_OK)
		return (rv);
	for (i = 0; i < fc->n; i++) {
		c = &fc->list[i];
		if (i == 0 || memcmp(c->numkey, c[-1].numkey, NUMKEY_LEN) != 0)
			live = 0;
		if (c->state == CLAIM_ACTIVE || c->expires > fc->now)
			live++;
		FUZZ_CHECK(live <= 1);
		FUZZ_CHECK(c->state == CLAIM_ACTIVE ||
		    c->state == CLAIM_PENDING);
		FUZZ_CHECK(claims_user_id_ok(c->user_id));
		if ((rv = store_claim_del(txn, c->numkey, c->user_id)) !=
		    STORE_OK)
			return (rv);
	}
	while ((rv = store_verify_first(txn, user, &reasons, &queued)) ==
	    STORE_OK) {
		if ((rv = store_verify_del(txn, user)) != STORE_OK)
			return (rv);
	}
	if (rv != STORE_NOTFOUND)
		return (rv);
	return (store_seen_prune(txn, INT64_MAX, FUZZ_PRUNE_BATCH, &pruned));
}

/*
 * Check the store after an input, then empty it for the next; now and
 * then a checkpoint, so that a long run does not fill the disk with log
 * files (a full disk fails the store, and so a property).
 */
void
fuzz_store_reset(int64_t now)
{
	static struct fuzz_claims	fc;
	static unsigned long		runs;

	fc.now = now;
	FUZZ_CHECK(claims_run(fuzz_reset_txn, &fc) == STORE_OK);
	if (++runs % FUZZ_CHECKPOINT_EVERY == 0)
		FUZZ_CHECK(store_checkpoint(fuzz_fx->store) == STORE_OK);
}
