/*
 * The migration of an older store to schema 5, at open.
 *
 * Schema 5 keeps each claim's date ('since') in milliseconds: number
 * records of format 3 instead of 2 (store.c).  From schema 4 the
 * migration rewrites every record of format 2, a batch per transaction;
 * a record of format 3 is left as it is, so a migration cut short by a
 * crash goes on where it stopped.  Format 2 stays readable all along, and
 * the schema version is written last.  From schema 3 or before, the steps
 * below write format 3 directly.
 *
 * Schema 4 keeps the claims on one number in one record of numbers.db,
 * keyed by 16 bytes of the number's HMAC instead of 32, and indexes users
 * and enrolment ids by a 64-bit hash: about half the disk of claims.db and
 * its three indexes (docs/performance.md).  Conflicts and watermarks keep
 * their layout but their number keys shrink to the same 16 bytes.
 *
 * The migration goes in steps, each made of transactions of about
 * MIGRATE_BATCH claims, so that a store of tens of millions of claims
 * neither needs a huge lock table nor starts again from nothing after a
 * crash:
 *
 *   1. claims.db is copied into numbers.db in key order, a number at a
 *      time.  Old keys sort by their 32-byte number key and new ones by its
 *      first 16 bytes, so numbers.db is written in its own key order: its
 *      pages come out full.  After a crash the copy goes on after the last
 *      number in numbers.db, which a transaction always writes whole.
 *   2. The per-number keys of watermarks.db are rewritten with 16-byte
 *      number keys.  A key tells which form it has (the length after its
 *      NUL), so this step can run again on a half-converted file.
 *   3. One transaction rewrites conflicts.db, removes claims.db and its
 *      indexes and writes schema version 4.  Until it commits, the store is
 *      still of the old schema and the next open resumes.
 */
#include "config.h"

#include <sys/types.h>
#include <sys/stat.h>

#include <db.h>
#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "phoneclaimd.h"
#include "store_int.h"
#include "xmalloc.h"

#define MIGRATE_BATCH		10000

/* claims.db of schema 1 to 3: numkey[32] user_id -> record, format 1. */
#define OLD_NUMKEY_LEN		32
#define OLD_CLAIM_FORMAT	1
#define OLD_OFF_STATE		1
#define OLD_OFF_SOURCE		2
#define OLD_OFF_SINCE		3
#define OLD_OFF_EXPIRES		11
#define OLD_OFF_LAST4		19
#define OLD_OFF_ENROL_LEN	23
#define OLD_OFF_ENROL		25

/* The old files that step 3 removes, indexes first. */
static const char *const migrate_old[] = {
	"claims_user.db", "claims_expiry.db", "claims_enrol.db", "claims.db"
};

/* The claims of one number, gathered from consecutive old keys. */
struct migrate_group {
	unsigned char	 numkey[NUMKEY_LEN];
	struct claim	*v;
	size_t		 n;
	size_t		 size;
};

static int	migrate_claims(struct store *, uint64_t *, const char **);
static int	migrate_batch(struct store *, DB *, DB_TXN *, unsigned char *,
		    int *, uint64_t *, int *);
static int	migrate_old_claim(const DBT *, const DBT *, struct claim *);
static int	migrate_write(struct store *, DB_TXN *,
		    struct migrate_group *);
static int	migrate_user_cmp(const void *, const void *);
static int	migrate_watermarks(struct store *, uint64_t *);
static int	migrate_finish(struct store *, uint64_t *, const char **);
static int	migrate_conflicts(struct store *, DB_TXN *, uint64_t *);
static int	migrate_since(struct store *, uint64_t *);
static int	migrate_since_batch(struct store *, DB_TXN *, unsigned char *,
		    int *, uint64_t *, int *);
static int	migrate_version(struct store *);

/*
 * Migrate the store from schema 'from' (1 to 4) to 5; 0, or -1 and *cause.
 * Logged at the start and the end, with the counts and the time taken.
 */
int
store_migrate(struct store *st, long long from, char **cause)
{
	const char	*what = "claims.db";
	uint64_t	 claims = 0, marks = 0, conflicts = 0;
	time_t		 t0 = time(NULL);
	int		 ret;

	log_info("store: migrating %s from schema version %lld to %d",
	    st->dir, from, STORE_SCHEMA_VERSION);
	if (from == 4) {
		what = "numbers.db";
		if ((ret = migrate_since(st, &claims)) == 0)
			ret = migrate_version(st);
	} else if ((ret = migrate_claims(st, &claims, &what)) == 0) {
		what = "watermarks.db";
		ret = migrate_watermarks(st, &marks);
	}
	if (ret == 0)
		ret = migrate_finish(st, &conflicts, &what);
	if (ret == 0)
		ret = st->env->log_flush(st->env, NULL);
	if (ret != 0) {
		xasprintf(cause, "cannot migrate %s in %s to schema version "
		    "%d: %s (the next start resumes the migration)", what,
		    st->dir, STORE_SCHEMA_VERSION, ret == STORE_CORRUPT ?
		    "a record does not decode" : db_strerror(ret));
		return (-1);
	}
	log_info("store: %s migrated to schema version %d in %llds: "
	    "%" PRIu64 " claim(s), %" PRIu64 " watermark(s), %" PRIu64
	    " conflict(s)", st->dir, STORE_SCHEMA_VERSION,
	    (long long)(time(NULL) - t0), claims, marks, conflicts);
	return (0);
}

/* Step 1: copy claims.db into numbers.db, a batch per transaction. */
static int
migrate_claims(struct store *st, uint64_t *np, const char **what)
{
	DB		*old = NULL, *num = st->db[STORE_DB_NUMBERS];
	DB_TXN		*tid;
	unsigned char	 last[NUMKEY_LEN];
	size_t		 len;
	db_mutex_t	 mu = 0;
	int		 have_last = 0, done = 0, ret, r;

	if (!store_file_exists(st, "claims.db"))
		return (0);
	/* Resume after the last number already copied. */
	ret = store_end_key(num, NULL, DB_LAST, last, sizeof last, &len);
	if (ret == 0 && len == NUMKEY_LEN)
		have_last = 1;
	else if (ret == 0 || ret == DB_BUFFER_SMALL)
		return (STORE_CORRUPT);
	else if (ret != DB_NOTFOUND)
		return (ret);
	if (have_last)
		log_info("store: resuming the migration of claims.db");

	if ((ret = db_create(&old, st->env, 0)) != 0)
		return (ret);
	if ((ret = st->env->txn_begin(st->env, NULL, &tid, 0)) != 0)
		goto out;
	if ((ret = old->open(old, tid, "claims.db", NULL, DB_BTREE, 0,
	    0)) != 0) {
		tid->abort(tid);
		goto out;
	}
	mu = store_unthread(old);
	if ((ret = tid->commit(tid, DB_TXN_NOSYNC)) != 0)
		goto out;
	*what = "numbers.db";
	while (!done) {
		if ((ret = st->env->txn_begin(st->env, NULL, &tid, 0)) != 0)
			break;
		ret = migrate_batch(st, old, tid, last, &have_last, np, &done);
		if (ret != 0) {
			tid->abort(tid);
			break;
		}
		if ((ret = tid->commit(tid, DB_TXN_NOSYNC)) != 0)
			break;
	}
out:
	store_rethread(old, mu);
	if ((r = old->close(old, 0)) != 0 && ret == 0)
		ret = r;
	return (ret);
}

/*
 * Copy the next MIGRATE_BATCH claims or so, whole numbers only, after the
 * number last (if *have_last); set last to the last number copied and
 * *done at the end of claims.db.
 */
static int
migrate_batch(struct store *st, DB *old, DB_TXN *tid, unsigned char *last,
    int *have_last, uint64_t *np, int *done)
{
	struct migrate_group	 g;
	DBC			*dbc;
	DBT			 key, data;
	u_int32_t		 op = DB_FIRST;
	size_t			 copied = 0;
	int			 ret, r;

	memset(&g, 0, sizeof g);
	if ((ret = old->cursor(old, tid, &dbc, 0)) != 0)
		return (ret);
	memset(&key, 0, sizeof key);
	memset(&data, 0, sizeof data);
	if (*have_last) {
		store_dbt(&key, last, NUMKEY_LEN);
		op = DB_SET_RANGE;
	}
	for (;; op = DB_NEXT) {
		if ((ret = dbc->get(dbc, &key, &data, op)) != 0)
			break;
		if (key.size <= OLD_NUMKEY_LEN) {
			ret = STORE_CORRUPT;
			break;
		}
		/* Already copied: the number last itself. */
		if (*have_last && memcmp(key.data, last, NUMKEY_LEN) == 0)
			continue;
		if (g.n > 0 && memcmp(key.data, g.numkey, NUMKEY_LEN) != 0) {
			if ((ret = migrate_write(st, tid, &g)) != 0)
				break;
			copied += g.n;
			*np += g.n;
			memcpy(last, g.numkey, NUMKEY_LEN);
			*have_last = 1;
			g.n = 0;
			if (copied >= MIGRATE_BATCH)
				break;
		}
		if (g.n == g.size) {
			g.size = g.size == 0 ? 4 : g.size * 2;
			g.v = xreallocarray(g.v, g.size, sizeof *g.v);
		}
		if (migrate_old_claim(&key, &data, &g.v[g.n]) != 0) {
			ret = STORE_CORRUPT;
			break;
		}
		memcpy(g.numkey, key.data, NUMKEY_LEN);
		g.n++;
	}
	if (ret == DB_NOTFOUND) {
		/* The end: the last group is complete. */
		ret = 0;
		*done = 1;
		if (g.n > 0 && (ret = migrate_write(st, tid, &g)) == 0)
			*np += g.n;
	}
	free(g.v);
	if ((r = dbc->close(dbc)) != 0 && ret == 0)
		ret = r;
	return (ret);
}

/*
 * Decode a claim of claims.db.  The number key keeps its first 16 bytes,
 * which is what hash_number now gives for the same number.  A 'since'
 * outside the 32-bit range of schema 4 (before 1970 or after 2106, which
 * only a wrong clock makes) is clamped to it, then kept in milliseconds.
 */
static int
migrate_old_claim(const DBT *key, const DBT *data, struct claim *c)
{
	const unsigned char	*k = key->data, *rec = data->data;
	size_t			 ulen, elen;

	ulen = key->size - OLD_NUMKEY_LEN;
	if (ulen > USER_ID_MAX || data->size < OLD_OFF_ENROL ||
	    rec[0] != OLD_CLAIM_FORMAT)
		return (-1);
	elen = store_get_u16(rec + OLD_OFF_ENROL_LEN);
	if (elen > ENROL_ID_MAX || data->size != OLD_OFF_ENROL + elen)
		return (-1);
	memset(c, 0, sizeof *c);
	memcpy(c->numkey, k, NUMKEY_LEN);
	memcpy(c->user_id, k + OLD_NUMKEY_LEN, ulen);
	/* As at open before: a claim that is not pending is active. */
	c->state = rec[OLD_OFF_STATE] == CLAIM_PENDING ? CLAIM_PENDING :
	    CLAIM_ACTIVE;
	c->source = rec[OLD_OFF_SOURCE];
	c->since_ms = store_get_i64(rec + OLD_OFF_SINCE);
	if (c->since_ms < 0)
		c->since_ms = 0;
	if (c->since_ms > UINT32_MAX)
		c->since_ms = UINT32_MAX;
	c->since_ms *= 1000;
	c->expires = c->state == CLAIM_PENDING ?
	    store_get_i64(rec + OLD_OFF_EXPIRES) : 0;
	memcpy(c->last4, rec + OLD_OFF_LAST4, LAST4_LEN);
	memcpy(c->enrol_id, rec + OLD_OFF_ENROL, elen);
	return (0);
}

/* Order claims by user id, as a number record holds them. */
static int
migrate_user_cmp(const void *a, const void *b)
{
	const struct claim	*ca = a, *cb = b;
	size_t			 la = strlen(ca->user_id);
	size_t			 lb = strlen(cb->user_id);
	int			 c;

	if ((c = memcmp(ca->user_id, cb->user_id, la < lb ? la : lb)) != 0)
		return (c);
	return (la < lb ? -1 : la > lb);
}

/* Write one number's claims as its record of numbers.db. */
static int
migrate_write(struct store *st, DB_TXN *tid, struct migrate_group *g)
{
	DB		*num = st->db[STORE_DB_NUMBERS];
	unsigned char	*rec;
	size_t		 len, i, j;
	DBT		 key, data;
	int		 ret;

	/*
	 * Old keys of one number are already in user order; two old numbers
	 * that share their first 16 bytes would need a sort, and a user twice
	 * keeps the first.
	 */
	qsort(g->v, g->n, sizeof *g->v, migrate_user_cmp);
	for (i = j = 0; i < g->n; i++)
		if (j == 0 || migrate_user_cmp(&g->v[j - 1], &g->v[i]) != 0)
			g->v[j++] = g->v[i];
	g->n = j;
	if (store_number_pack(g->v, g->n, &rec, &len) != 0)
		return (STORE_CORRUPT);
	store_dbt(&key, g->numkey, NUMKEY_LEN);
	store_dbt(&data, rec, len);
	ret = num->put(num, tid, &key, &data, 0);
	free(rec);
	return (ret);
}

/*
 * Step 2: rewrite the per-number keys of watermarks.db (user_id NUL
 * numkey[32]) with 16-byte number keys, a batch per transaction.  A new key
 * is a prefix of its old one, so it sorts before the cursor and the walk
 * never meets it again.
 */
static int
migrate_watermarks(struct store *st, uint64_t *np)
{
	DB		*db = st->db[STORE_DB_WATERMARKS];
	DB_TXN		*tid;
	DBC		*dbc;
	DBT		 key, data, nkey, ndata;
	unsigned char	 from[WATERMARK_KEY_MAX + OLD_NUMKEY_LEN];
	unsigned char	 val[STORE_TIME_LEN];
	const unsigned char *nul;
	size_t		 fromlen = 0, n, ulen;
	u_int32_t	 op;
	int		 ret = 0, r, done = 0;

	while (!done && ret == 0) {
		if ((ret = st->env->txn_begin(st->env, NULL, &tid, 0)) != 0)
			break;
		if ((ret = db->cursor(db, tid, &dbc, 0)) != 0) {
			tid->abort(tid);
			break;
		}
		memset(&key, 0, sizeof key);
		memset(&data, 0, sizeof data);
		op = DB_FIRST;
		if (fromlen > 0) {
			store_dbt(&key, from, fromlen);
			op = DB_SET_RANGE;
		}
		for (n = 0; n < MIGRATE_BATCH; n++, op = DB_NEXT) {
			if ((ret = dbc->get(dbc, &key, &data, op)) != 0)
				break;
			if (key.size > sizeof from) {
				ret = STORE_CORRUPT;
				break;
			}
			/* Where the next transaction goes on. */
			memcpy(from, key.data, key.size);
			fromlen = key.size;
			nul = memchr(key.data, '\0', key.size);
			if (nul == NULL)
				continue;
			ulen = (size_t)(nul - (unsigned char *)key.data);
			if (key.size - ulen - 1 != OLD_NUMKEY_LEN)
				continue;
			if (data.size != STORE_TIME_LEN) {
				ret = STORE_CORRUPT;
				break;
			}
			memcpy(val, data.data, sizeof val);
			if ((ret = dbc->del(dbc, 0)) != 0)
				break;
			store_dbt(&nkey, from, ulen + 1 + NUMKEY_LEN);
			store_dbt(&ndata, val, sizeof val);
			if ((ret = db->put(db, tid, &nkey, &ndata, 0)) != 0)
				break;
			(*np)++;
		}
		if (ret == DB_NOTFOUND) {
			ret = 0;
			done = 1;
		}
		if ((r = dbc->close(dbc)) != 0 && ret == 0)
			ret = r;
		if (ret != 0)
			tid->abort(tid);
		else
			ret = tid->commit(tid, DB_TXN_NOSYNC);
	}
	return (ret);
}

/*
 * Step 3, in one transaction: conflicts.db, the removal of the old files,
 * the schema version.  The saved counts go too: the next count walks
 * numbers.db.
 */
static int
migrate_finish(struct store *st, uint64_t *np, const char **what)
{
	DB		*meta = st->db[STORE_DB_META];
	DB_TXN		*tid;
	DBT		 key, data;
	char		 version[16];
	size_t		 i;
	int		 ret;

	if ((ret = st->env->txn_begin(st->env, NULL, &tid, 0)) != 0)
		return (ret);
	*what = "conflicts.db";
	if ((ret = migrate_conflicts(st, tid, np)) != 0)
		goto fail;
	for (i = 0; i < sizeof migrate_old / sizeof migrate_old[0]; i++) {
		if (!store_file_exists(st, migrate_old[i]))
			continue;
		*what = migrate_old[i];
		if ((ret = st->env->dbremove(st->env, tid, migrate_old[i],
		    NULL, 0)) != 0)
			goto fail;
	}
	*what = "meta.db";
	store_dbt(&key, "counts", strlen("counts"));
	if ((ret = meta->del(meta, tid, &key, 0)) != 0 &&
	    ret != DB_NOTFOUND)
		goto fail;
	snprintf(version, sizeof version, "%d", STORE_SCHEMA_VERSION);
	store_dbt(&key, "schema_version", strlen("schema_version"));
	store_dbt(&data, version, strlen(version));
	if ((ret = meta->put(meta, tid, &key, &data, 0)) != 0)
		goto fail;
	return (tid->commit(tid, DB_TXN_NOSYNC));

fail:
	tid->abort(tid);
	return (ret);
}

/*
 * Rewrite every conflict with a 16-byte number key.  Old and new keys
 * cannot be told apart, which is why this runs in the last transaction:
 * when it commits, every key is new.
 */
static int
migrate_conflicts(struct store *st, DB_TXN *tid, uint64_t *np)
{
	DB		*db = st->db[STORE_DB_CONFLICTS];
	DBC		*dbc;
	DBT		 key, data;
	unsigned char	**keys = NULL, **recs = NULL;
	size_t		*klens = NULL, *rlens = NULL, n = 0, size = 0, i;
	int		 ret, r;

	if ((ret = db->cursor(db, tid, &dbc, 0)) != 0)
		return (ret);
	memset(&key, 0, sizeof key);
	memset(&data, 0, sizeof data);
	while ((ret = dbc->get(dbc, &key, &data, DB_NEXT)) == 0) {
		if (key.size <= OLD_NUMKEY_LEN) {
			ret = STORE_CORRUPT;
			break;
		}
		if (n == size) {
			size = size == 0 ? 16 : size * 2;
			keys = xreallocarray(keys, size, sizeof *keys);
			recs = xreallocarray(recs, size, sizeof *recs);
			klens = xreallocarray(klens, size, sizeof *klens);
			rlens = xreallocarray(rlens, size, sizeof *rlens);
		}
		/* numkey[32] user -> numkey[16] user */
		klens[n] = key.size - (OLD_NUMKEY_LEN - NUMKEY_LEN);
		keys[n] = xmalloc(klens[n]);
		memcpy(keys[n], key.data, NUMKEY_LEN);
		memcpy(keys[n] + NUMKEY_LEN,
		    (unsigned char *)key.data + OLD_NUMKEY_LEN,
		    key.size - OLD_NUMKEY_LEN);
		rlens[n] = data.size;
		recs[n] = xmalloc(data.size);
		memcpy(recs[n], data.data, data.size);
		n++;
		if ((ret = dbc->del(dbc, 0)) != 0)
			break;
	}
	if (ret == DB_NOTFOUND)
		ret = 0;
	if ((r = dbc->close(dbc)) != 0 && ret == 0)
		ret = r;
	for (i = 0; i < n; i++) {
		if (ret == 0) {
			store_dbt(&key, keys[i], klens[i]);
			store_dbt(&data, recs[i], rlens[i]);
			ret = db->put(db, tid, &key, &data, 0);
		}
		free(keys[i]);
		free(recs[i]);
	}
	if (ret == 0)
		*np = n;
	free(keys);
	free(recs);
	free(klens);
	free(rlens);
	return (ret);
}

/*
 * From schema 4: rewrite the number records of format 2 (since in
 * seconds) in format 3, a batch per transaction; *np counts the records.
 */
static int
migrate_since(struct store *st, uint64_t *np)
{
	DB_TXN		*tid;
	unsigned char	 last[NUMKEY_LEN];
	int		 have_last = 0, done = 0, ret = 0;

	while (!done && ret == 0) {
		if ((ret = st->env->txn_begin(st->env, NULL, &tid, 0)) != 0)
			break;
		ret = migrate_since_batch(st, tid, last, &have_last, np,
		    &done);
		if (ret != 0)
			tid->abort(tid);
		else
			ret = tid->commit(tid, DB_TXN_NOSYNC);
	}
	return (ret);
}

/*
 * Rewrite up to MIGRATE_BATCH records after the number last (if
 * *have_last); set last to the last one seen and *done at the end.
 */
static int
migrate_since_batch(struct store *st, DB_TXN *tid, unsigned char *last,
    int *have_last, uint64_t *np, int *done)
{
	DB		*num = st->db[STORE_DB_NUMBERS];
	DBC		*dbc;
	DBT		 key, data, ndata;
	unsigned char	*rec;
	size_t		 len, n;
	u_int32_t	 op = DB_FIRST;
	int		 ret, r;

	if ((ret = num->cursor(num, tid, &dbc, 0)) != 0)
		return (ret);
	memset(&key, 0, sizeof key);
	memset(&data, 0, sizeof data);
	if (*have_last) {
		store_dbt(&key, last, NUMKEY_LEN);
		op = DB_SET_RANGE;
	}
	for (n = 0; n < MIGRATE_BATCH; op = DB_NEXT) {
		if ((ret = dbc->get(dbc, &key, &data, op)) != 0)
			break;
		if (key.size != NUMKEY_LEN) {
			ret = STORE_CORRUPT;
			break;
		}
		if (*have_last && memcmp(key.data, last, NUMKEY_LEN) == 0)
			continue;
		memcpy(last, key.data, NUMKEY_LEN);
		*have_last = 1;
		n++;
		if ((ret = store_number_repack(&key, &data, &rec, &len)) == 1) {
			ret = 0;
			continue;
		}
		if (ret != 0)
			break;
		store_dbt(&ndata, rec, len);
		ret = dbc->put(dbc, &key, &ndata, DB_CURRENT);
		free(rec);
		if (ret != 0)
			break;
		(*np)++;
	}
	if (ret == DB_NOTFOUND) {
		ret = 0;
		*done = 1;
	}
	if ((r = dbc->close(dbc)) != 0 && ret == 0)
		ret = r;
	return (ret);
}

/* From schema 4, last: write the schema version. */
static int
migrate_version(struct store *st)
{
	DB		*meta = st->db[STORE_DB_META];
	DB_TXN		*tid;
	DBT		 key, data;
	char		 version[16];
	int		 ret;

	if ((ret = st->env->txn_begin(st->env, NULL, &tid, 0)) != 0)
		return (ret);
	snprintf(version, sizeof version, "%d", STORE_SCHEMA_VERSION);
	store_dbt(&key, "schema_version", strlen("schema_version"));
	store_dbt(&data, version, strlen(version));
	if ((ret = meta->put(meta, tid, &key, &data, 0)) != 0) {
		tid->abort(tid);
		return (ret);
	}
	return (tid->commit(tid, DB_TXN_NOSYNC));
}
