/*
 * The store's claims and conflicts: claims.db and the indexes Berkeley DB
 * keeps for it (by user, by expiry, by enrolment id), and conflicts.db.
 * The record formats and the reasons for them are at the top of store.c.
 */
#include "config.h"

#include <sys/types.h>
#include <sys/file.h>
#include <sys/stat.h>

#include <db.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "log.h"
#include "phoneclaimd.h"
#include "store_int.h"
#include "xmalloc.h"

/* A growing array of claims read by a cursor. */
struct store_claims {
	struct claim	*v;
	size_t		 n;
	size_t		 size;
};

static int	store_claims_by_index(struct store_txn *, enum store_db,
		    const char *, size_t, const char *, struct claim **,
		    size_t *);
static int	store_claim_key(const unsigned char *, const char *,
		    unsigned char *, size_t *);
static int	store_claim_pack(const struct claim *, unsigned char *,
		    size_t *, unsigned char *, size_t *);
static int	store_claim_unpack(const DBT *, const DBT *, struct claim *);
static int	store_claims_add(struct store_claims *, const DBT *,
		    const DBT *);
static int	store_claims_finish(struct store *, DBC *, int,
		    struct store_claims *, struct claim **, size_t *,
		    const char *);
static unsigned char *store_conflict_pack(const struct conflict *,
		    unsigned char *, size_t *, size_t *);
static int	store_conflict_unpack(const DBT *, const DBT *,
		    struct conflict *);
static const unsigned char *store_conflict_holders(const unsigned char *,
		    const unsigned char *, struct conflict *);
static int	store_conflict_removal(const unsigned char *,
		    const unsigned char *, struct conflict *);
static int	store_claim_old(struct store_txn *, DBT *, int *);
static void	store_count_state(struct store_txn *, int, int);

/*
 * Secondary key callbacks.  Each one fills skey through store_dbt, which
 * clears it first: on a delete, Berkeley DB 5.3 (__dbc_del_primary) passes
 * the same skey to every secondary in turn, and after one returns
 * DB_DONOTINDEX it carries DB_DBT_MULTIPLE, which would make the next key be
 * read as an array of DBTs (a crash on deleting an active claim).
 */

/* Secondary key of claims_user.db: the user id after the number key. */
int
store_user_key_cb(DB *sdb, const DBT *pkey, const DBT *pdata, DBT *skey)
{
	(void)sdb;
	(void)pdata;
	if (pkey->size <= NUMKEY_LEN)
		return (STORE_CORRUPT);
	store_dbt(skey, (unsigned char *)pkey->data + NUMKEY_LEN,
	    pkey->size - NUMKEY_LEN);
	return (0);
}

/* Secondary key of claims_expiry.db: the expiry, for pending claims only. */
int
store_expiry_key_cb(DB *sdb, const DBT *pkey, const DBT *pdata, DBT *skey)
{
	const unsigned char	*rec = pdata->data;

	(void)sdb;
	(void)pkey;
	if (pdata->size < CLAIM_OFF_ENROL || rec[0] != CLAIM_FORMAT)
		return (STORE_CORRUPT);
	if (rec[CLAIM_OFF_STATE] != CLAIM_PENDING)
		return (DB_DONOTINDEX);
	store_dbt(skey, rec + CLAIM_OFF_EXPIRES, STORE_TIME_LEN);
	return (0);
}

/* Secondary key of claims_enrol.db: the enrolment id, when there is one. */
int
store_enrol_key_cb(DB *sdb, const DBT *pkey, const DBT *pdata, DBT *skey)
{
	const unsigned char	*rec = pdata->data;
	size_t			 elen;

	(void)sdb;
	(void)pkey;
	if (pdata->size < CLAIM_OFF_ENROL || rec[0] != CLAIM_FORMAT)
		return (STORE_CORRUPT);
	elen = store_get_u16(rec + CLAIM_OFF_ENROL_LEN);
	if (pdata->size != CLAIM_OFF_ENROL + elen)
		return (STORE_CORRUPT);
	if (elen == 0)
		return (DB_DONOTINDEX);
	store_dbt(skey, rec + CLAIM_OFF_ENROL, elen);
	return (0);
}

/* Build a claims.db key; -1 if the user id is empty or too long. */
static int
store_claim_key(const unsigned char *numkey, const char *user_id,
    unsigned char *key, size_t *len)
{
	size_t	ulen;

	ulen = strnlen(user_id, USER_ID_MAX + 1);
	if (ulen == 0 || ulen > USER_ID_MAX)
		return (-1);
	memcpy(key, numkey, NUMKEY_LEN);
	memcpy(key + NUMKEY_LEN, user_id, ulen);
	*len = NUMKEY_LEN + ulen;
	return (0);
}

/* Pack a claim's key and record; -1 if a field is out of range. */
static int
store_claim_pack(const struct claim *c, unsigned char *key, size_t *klen,
    unsigned char *rec, size_t *rlen)
{
	size_t	elen, l4;

	if (store_claim_key(c->numkey, c->user_id, key, klen) != 0)
		return (-1);
	if (c->state != CLAIM_PENDING && c->state != CLAIM_ACTIVE)
		return (-1);
	if (c->source < 0 || c->source > UCHAR_MAX)
		return (-1);
	if ((elen = strnlen(c->enrol_id, sizeof c->enrol_id)) > ENROL_ID_MAX)
		return (-1);
	if ((l4 = strnlen(c->last4, sizeof c->last4)) > LAST4_LEN)
		return (-1);
	rec[0] = CLAIM_FORMAT;
	rec[CLAIM_OFF_STATE] = (unsigned char)c->state;
	rec[CLAIM_OFF_SOURCE] = (unsigned char)c->source;
	store_put_i64(rec + CLAIM_OFF_SINCE, c->since);
	store_put_i64(rec + CLAIM_OFF_EXPIRES, c->expires);
	memset(rec + CLAIM_OFF_LAST4, 0, LAST4_LEN);
	memcpy(rec + CLAIM_OFF_LAST4, c->last4, l4);
	store_put_u16(rec + CLAIM_OFF_ENROL_LEN, elen);
	memcpy(rec + CLAIM_OFF_ENROL, c->enrol_id, elen);
	*rlen = CLAIM_OFF_ENROL + elen;
	return (0);
}

/* Unpack a claims.db key and record; -1 (logged) if corrupt. */
static int
store_claim_unpack(const DBT *key, const DBT *data, struct claim *c)
{
	const unsigned char	*k = key->data, *rec = data->data;
	size_t			 ulen, elen;

	if (key->size <= NUMKEY_LEN || key->size > CLAIM_KEY_MAX)
		goto bad;
	if (data->size < CLAIM_OFF_ENROL || rec[0] != CLAIM_FORMAT)
		goto bad;
	elen = store_get_u16(rec + CLAIM_OFF_ENROL_LEN);
	if (elen > ENROL_ID_MAX || data->size != CLAIM_OFF_ENROL + elen)
		goto bad;
	ulen = key->size - NUMKEY_LEN;
	memset(c, 0, sizeof *c);
	memcpy(c->numkey, k, NUMKEY_LEN);
	memcpy(c->user_id, k + NUMKEY_LEN, ulen);
	c->state = rec[CLAIM_OFF_STATE];
	c->source = rec[CLAIM_OFF_SOURCE];
	c->since = store_get_i64(rec + CLAIM_OFF_SINCE);
	c->expires = store_get_i64(rec + CLAIM_OFF_EXPIRES);
	memcpy(c->last4, rec + CLAIM_OFF_LAST4, LAST4_LEN);
	memcpy(c->enrol_id, rec + CLAIM_OFF_ENROL, elen);
	return (0);

bad:
	log_warnx("store: undecodable record in claims.db (format %u, "
	    "%u bytes)", data->size > 0 ? rec[0] : 0, data->size);
	return (-1);
}

/* Append one claim to a growing array. */
static int
store_claims_add(struct store_claims *sc, const DBT *key, const DBT *data)
{
	if (sc->n == sc->size) {
		sc->size = sc->size == 0 ? 4 : sc->size * 2;
		sc->v = xreallocarray(sc->v, sc->size, sizeof *sc->v);
	}
	if (store_claim_unpack(key, data, &sc->v[sc->n]) != 0)
		return (STORE_CORRUPT);
	sc->n++;
	return (0);
}

/* End a claims scan: close the cursor, hand over or free the array. */
static int
store_claims_finish(struct store *st, DBC *dbc, int ret,
    struct store_claims *sc, struct claim **arrp, size_t *np,
    const char *what)
{
	int	r;

	if ((r = store_cursor_done(st, dbc, ret, what)) != STORE_OK ||
	    sc->n == 0) {
		free(sc->v);
		return (r);
	}
	*arrp = sc->v;
	*np = sc->n;
	return (STORE_OK);
}

/* Read every claim on a number, taking write locks (check-and-reserve). */
int
store_claims_by_number(struct store_txn *txn, const unsigned char *numkey,
    struct claim **arrp, size_t *np)
{
	struct store		*st = txn->st;
	DB			*db = st->db[STORE_DB_CLAIMS];
	struct store_claims	 sc = { NULL, 0, 0 };
	DBC			*dbc;
	DBT			 key, data;
	u_int32_t		 op;
	int			 ret;

	*arrp = NULL;
	*np = 0;
	if (st->failed)
		return (STORE_ERROR);
	if ((ret = db->cursor(db, txn->tid, &dbc, 0)) != 0)
		return (store_result(st, ret, "open claims cursor"));
	store_dbt(&key, numkey, NUMKEY_LEN);
	memset(&data, 0, sizeof data);
	for (op = DB_SET_RANGE;; op = DB_NEXT) {
		if ((ret = dbc->get(dbc, &key, &data, op | DB_RMW)) != 0)
			break;
		if (key.size < NUMKEY_LEN ||
		    memcmp(key.data, numkey, NUMKEY_LEN) != 0)
			break;
		if ((ret = store_claims_add(&sc, &key, &data)) != 0)
			break;
	}
	return (store_claims_finish(st, dbc, ret, &sc, arrp, np,
	    "read claims by number"));
}

/*
 * Read every claim whose secondary key in index db is the string key (at
 * most max bytes; an empty or longer one matches nothing).
 */
static int
store_claims_by_index(struct store_txn *txn, enum store_db which,
    const char *key, size_t max, const char *what, struct claim **arrp,
    size_t *np)
{
	struct store		*st = txn->st;
	DB			*db = st->db[which];
	struct store_claims	 sc = { NULL, 0, 0 };
	DBC			*dbc;
	DBT			 skey, pkey, data;
	size_t			 len;
	u_int32_t		 op;
	int			 ret;

	*arrp = NULL;
	*np = 0;
	if (st->failed)
		return (STORE_ERROR);
	len = strnlen(key, max + 1);
	if (len == 0 || len > max)
		return (STORE_OK);
	if ((ret = db->cursor(db, txn->tid, &dbc, 0)) != 0)
		return (store_result(st, ret, what));
	store_dbt(&skey, key, len);
	memset(&pkey, 0, sizeof pkey);
	memset(&data, 0, sizeof data);
	for (op = DB_SET;; op = DB_NEXT_DUP) {
		ret = dbc->pget(dbc, &skey, &pkey, &data, op | DB_RMW);
		if (ret != 0)
			break;
		if ((ret = store_claims_add(&sc, &pkey, &data)) != 0)
			break;
	}
	return (store_claims_finish(st, dbc, ret, &sc, arrp, np, what));
}

/* Read every claim of a user, through claims_user.db. */
int
store_claims_by_user(struct store_txn *txn, const char *user_id,
    struct claim **arrp, size_t *np)
{
	return (store_claims_by_index(txn, STORE_DB_CLAIMS_USER, user_id,
	    USER_ID_MAX, "read claims by user", arrp, np));
}

/* Read every claim with an enrolment id, through claims_enrol.db. */
int
store_claims_by_enrol(struct store_txn *txn, const char *enrol_id,
    struct claim **arrp, size_t *np)
{
	return (store_claims_by_index(txn, STORE_DB_CLAIMS_ENROL, enrol_id,
	    ENROL_ID_MAX, "read claims by enrolment id", arrp, np));
}

/*
 * Read the state of the claim stored under key, for the counts: 0 if there
 * is none.  Callers have read the claim already (with DB_RMW), so its page
 * is cached and locked: this costs no I/O and no new lock.
 */
static int
store_claim_old(struct store_txn *txn, DBT *key, int *state)
{
	struct store	*st = txn->st;
	DB		*db = st->db[STORE_DB_CLAIMS];
	unsigned char	 rec[CLAIM_OFF_STATE + 1];
	DBT		 data;
	int		 r;

	*state = 0;
	memset(&data, 0, sizeof data);
	data.data = rec;
	data.ulen = sizeof rec;
	data.dlen = sizeof rec;
	data.flags = DB_DBT_USERMEM | DB_DBT_PARTIAL;
	r = store_result(st, db->get(db, txn->tid, key, &data, DB_RMW),
	    "read claim");
	if (r == STORE_NOTFOUND)
		return (STORE_OK);
	if (r != STORE_OK)
		return (r);
	/* As at open: a claim that is not pending counts as active. */
	if (data.size > CLAIM_OFF_STATE &&
	    rec[CLAIM_OFF_STATE] == CLAIM_PENDING)
		*state = CLAIM_PENDING;
	else
		*state = CLAIM_ACTIVE;
	return (STORE_OK);
}

/* Note in the transaction that a claim went from state old to new (0: none). */
static void
store_count_state(struct store_txn *txn, int old, int new)
{
	if (old == 0)
		txn->d_claims++;
	else if (old == CLAIM_PENDING)
		txn->d_pending--;
	else
		txn->d_active--;
	if (new == 0)
		txn->d_claims--;
	else if (new == CLAIM_PENDING)
		txn->d_pending++;
	else
		txn->d_active++;
}

/* Write a claim, replacing any claim of the same user on the number. */
int
store_claim_put(struct store_txn *txn, const struct claim *c)
{
	struct store	*st = txn->st;
	DB		*db = st->db[STORE_DB_CLAIMS];
	unsigned char	 kbuf[CLAIM_KEY_MAX], rbuf[CLAIM_REC_MAX];
	size_t		 klen, rlen;
	DBT		 key, data;
	int		 r, old;

	if (st->failed)
		return (STORE_ERROR);
	if (store_claim_pack(c, kbuf, &klen, rbuf, &rlen) != 0) {
		log_warnx("store: refusing to write an invalid claim");
		return (STORE_ERROR);
	}
	store_dbt(&key, kbuf, klen);
	store_dbt(&data, rbuf, rlen);
	if ((r = store_claim_old(txn, &key, &old)) != STORE_OK)
		return (r);
	r = store_result(st, db->put(db, txn->tid, &key, &data, 0),
	    "write claim");
	if (r == STORE_OK)
		store_count_state(txn, old, c->state);
	return (r == STORE_NOTFOUND ? STORE_ERROR : r);
}

/* Delete a user's claim on a number; STORE_NOTFOUND if there is none. */
int
store_claim_del(struct store_txn *txn, const unsigned char *numkey,
    const char *user_id)
{
	struct store	*st = txn->st;
	DB		*db = st->db[STORE_DB_CLAIMS];
	unsigned char	 kbuf[CLAIM_KEY_MAX];
	size_t		 klen;
	DBT		 key;
	int		 r, old;

	if (st->failed)
		return (STORE_ERROR);
	if (store_claim_key(numkey, user_id, kbuf, &klen) != 0)
		return (STORE_NOTFOUND);
	store_dbt(&key, kbuf, klen);
	if ((r = store_claim_old(txn, &key, &old)) != STORE_OK)
		return (r);
	if (old == 0)
		return (STORE_NOTFOUND);
	r = store_result(st, db->del(db, txn->tid, &key, 0), "delete claim");
	if (r == STORE_OK)
		store_count_state(txn, old, 0);
	return (r);
}

/*
 * Call cb with every claim in key order (number key, then user id), from
 * the first one, or from the one after the claim after when it is not
 * NULL, so that a long walk can go in short transactions.  cb returns 0 to
 * go on, anything else to stop; either way the result is STORE_OK unless
 * the store fails.
 */
int
store_claims_all(struct store_txn *txn, const struct claim *after,
    int (*cb)(const struct claim *, void *), void *arg)
{
	struct store	*st = txn->st;
	DB		*db = st->db[STORE_DB_CLAIMS];
	unsigned char	 kbuf[CLAIM_KEY_MAX];
	size_t		 klen = 0;
	struct claim	 c;
	DBC		*dbc;
	DBT		 key, data;
	u_int32_t	 op = DB_FIRST;
	int		 ret;

	if (st->failed)
		return (STORE_ERROR);
	memset(&key, 0, sizeof key);
	if (after != NULL) {
		if (store_claim_key(after->numkey, after->user_id, kbuf,
		    &klen) != 0)
			return (STORE_ERROR);
		store_dbt(&key, kbuf, klen);
		op = DB_SET_RANGE;
	}
	if ((ret = db->cursor(db, txn->tid, &dbc, 0)) != 0)
		return (store_result(st, ret, "open claims cursor"));
	memset(&data, 0, sizeof data);
	for (;; op = DB_NEXT) {
		if ((ret = dbc->get(dbc, &key, &data, op)) != 0)
			break;
		if (op == DB_SET_RANGE && key.size == klen &&
		    memcmp(key.data, kbuf, klen) == 0)
			continue;
		if (store_claim_unpack(&key, &data, &c) != 0) {
			ret = STORE_CORRUPT;
			break;
		}
		if (cb(&c, arg) != 0)
			break;
	}
	return (store_cursor_done(st, dbc, ret, "read every claim"));
}

/*
 * Read up to max pending claims that expire after 'after' and at or before
 * now, oldest first.
 */
int
store_claims_expired(struct store_txn *txn, int64_t after, int64_t now,
    size_t max, struct claim **arrp, size_t *np)
{
	struct store		*st = txn->st;
	DB			*db = st->db[STORE_DB_CLAIMS_EXPIRY];
	struct store_claims	 sc = { NULL, 0, 0 };
	DBC			*dbc;
	DBT			 skey, pkey, data;
	unsigned char		 from[STORE_TIME_LEN];
	u_int32_t		 op;
	int			 ret = 0;

	*arrp = NULL;
	*np = 0;
	if (st->failed)
		return (STORE_ERROR);
	if ((ret = db->cursor(db, txn->tid, &dbc, 0)) != 0)
		return (store_result(st, ret, "open expiry index cursor"));
	memset(&skey, 0, sizeof skey);
	memset(&pkey, 0, sizeof pkey);
	memset(&data, 0, sizeof data);
	op = DB_FIRST;
	if (after >= 0) {
		/* The first key above 'after'. */
		store_put_i64(from, after + 1);
		store_dbt(&skey, from, sizeof from);
		op = DB_SET_RANGE;
	}
	for (; sc.n < max; op = DB_NEXT) {
		ret = dbc->pget(dbc, &skey, &pkey, &data, op | DB_RMW);
		if (ret != 0)
			break;
		if (skey.size != 8) {
			ret = STORE_CORRUPT;
			break;
		}
		if (store_get_i64(skey.data) > now)
			break;
		if ((ret = store_claims_add(&sc, &pkey, &data)) != 0)
			break;
	}
	return (store_claims_finish(st, dbc, ret, &sc, arrp, np,
	    "read expired claims"));
}

/*
 * Pack a conflict's key into kbuf and return its record, allocated; NULL if
 * a field is out of range.
 */
static unsigned char *
store_conflict_pack(const struct conflict *cf, unsigned char *kbuf,
    size_t *klen, size_t *rlen)
{
	unsigned char	*rec, *p;
	size_t		 llen, hlen, mlen, size, i;

	if (store_claim_key(cf->numkey, cf->user_id, kbuf, klen) != 0)
		return (NULL);
	if ((llen = strnlen(cf->log_id, sizeof cf->log_id)) > LOG_ID_MAX ||
	    strnlen(cf->last4, sizeof cf->last4) > LAST4_LEN ||
	    (mlen = strnlen(cf->method, sizeof cf->method)) > ENROL_ID_MAX ||
	    cf->nholders > 0xffff || cf->removal < 0 || cf->removal > 0xff ||
	    cf->removal_code < 0 || cf->removal_code > 0xffff)
		return (NULL);
	size = CONFLICT_OFF_LOG + llen + 2 + CONFLICT_RM_LEN + mlen;
	for (i = 0; i < cf->nholders; i++) {
		if ((hlen = strlen(cf->holders[i])) > USER_ID_MAX)
			return (NULL);
		size += 2 + hlen;
	}
	rec = xcalloc(1, size);
	rec[0] = CONFLICT_FORMAT;
	store_put_i64(rec + CONFLICT_OFF_SINCE, cf->since);
	memcpy(rec + CONFLICT_OFF_LAST4, cf->last4,
	    strnlen(cf->last4, sizeof cf->last4));
	store_put_u16(rec + CONFLICT_OFF_LOG_LEN, llen);
	memcpy(rec + CONFLICT_OFF_LOG, cf->log_id, llen);
	p = rec + CONFLICT_OFF_LOG + llen;
	store_put_u16(p, cf->nholders);
	p += 2;
	for (i = 0; i < cf->nholders; i++) {
		hlen = strlen(cf->holders[i]);
		store_put_u16(p, hlen);
		memcpy(p + 2, cf->holders[i], hlen);
		p += 2 + hlen;
	}
	p[0] = (unsigned char)cf->removal;
	store_put_i64(p + 1, cf->removal_at);
	store_put_u16(p + 9, (size_t)cf->removal_code);
	store_put_u16(p + 11, mlen);
	memcpy(p + CONFLICT_RM_LEN, cf->method, mlen);
	*rlen = size;
	return (rec);
}

/* Unpack a conflicts.db key and record; -1 (logged) if corrupt. */
static int
store_conflict_unpack(const DBT *key, const DBT *data, struct conflict *cf)
{
	const unsigned char	*k = key->data, *rec = data->data, *p;
	size_t			 llen;

	memset(cf, 0, sizeof *cf);
	if (key->size <= NUMKEY_LEN || key->size > CLAIM_KEY_MAX)
		goto bad;
	if (data->size < CONFLICT_OFF_LOG + 2 || (rec[0] != CONFLICT_FORMAT &&
	    rec[0] != CONFLICT_FORMAT_1))
		goto bad;
	llen = store_get_u16(rec + CONFLICT_OFF_LOG_LEN);
	if (llen > LOG_ID_MAX || data->size < CONFLICT_OFF_LOG + llen + 2)
		goto bad;
	memcpy(cf->numkey, k, NUMKEY_LEN);
	memcpy(cf->user_id, k + NUMKEY_LEN, key->size - NUMKEY_LEN);
	cf->since = store_get_i64(rec + CONFLICT_OFF_SINCE);
	memcpy(cf->last4, rec + CONFLICT_OFF_LAST4, LAST4_LEN);
	memcpy(cf->log_id, rec + CONFLICT_OFF_LOG, llen);
	p = store_conflict_holders(rec + CONFLICT_OFF_LOG + llen,
	    rec + data->size, cf);
	if (p == NULL)
		goto bad;
	if (rec[0] == CONFLICT_FORMAT_1 ? p != rec + data->size :
	    store_conflict_removal(p, rec + data->size, cf) != 0)
		goto bad;
	return (0);

bad:
	store_conflict_clear(cf);
	log_warnx("store: undecodable record in conflicts.db (%u bytes)",
	    data->size);
	return (-1);
}

/* Unpack the holders list at p; return its end, or NULL if corrupt. */
static const unsigned char *
store_conflict_holders(const unsigned char *p, const unsigned char *end,
    struct conflict *cf)
{
	size_t	n, i, hlen;

	n = store_get_u16(p);
	p += 2;
	if (n > 0)
		cf->holders = xcalloc(n, sizeof *cf->holders);
	for (i = 0; i < n; i++) {
		if (end - p < 2)
			return (NULL);
		hlen = store_get_u16(p);
		p += 2;
		if (hlen > USER_ID_MAX || (size_t)(end - p) < hlen)
			return (NULL);
		cf->holders[i] = xmalloc(hlen + 1);
		memcpy(cf->holders[i], p, hlen);
		cf->holders[i][hlen] = '\0';
		cf->nholders++;
		p += hlen;
	}
	return (p);
}

/* Unpack the removal part that runs from p to end. */
static int
store_conflict_removal(const unsigned char *p, const unsigned char *end,
    struct conflict *cf)
{
	size_t	mlen;

	if (end - p < CONFLICT_RM_LEN)
		return (-1);
	cf->removal = p[0];
	cf->removal_at = store_get_i64(p + 1);
	cf->removal_code = (int)store_get_u16(p + 9);
	mlen = store_get_u16(p + 11);
	if (mlen > ENROL_ID_MAX || (size_t)(end - p) != CONFLICT_RM_LEN + mlen)
		return (-1);
	memcpy(cf->method, p + CONFLICT_RM_LEN, mlen);
	cf->method[mlen] = '\0';
	return (0);
}

/* Free a conflict's holders. */
void
store_conflict_clear(struct conflict *cf)
{
	size_t	i;

	for (i = 0; i < cf->nholders; i++)
		free(cf->holders[i]);
	free(cf->holders);
	cf->holders = NULL;
	cf->nholders = 0;
}

/* Record a conflict, replacing one for the same number and user. */
int
store_conflict_put(struct store_txn *txn, const struct conflict *cf)
{
	struct store	*st = txn->st;
	DB		*db = st->db[STORE_DB_CONFLICTS];
	unsigned char	 kbuf[CLAIM_KEY_MAX], *rec;
	size_t		 klen, rlen;
	DBT		 key, data;
	int		 ret, r;

	if (st->failed)
		return (STORE_ERROR);
	if ((rec = store_conflict_pack(cf, kbuf, &klen, &rlen)) == NULL) {
		log_warnx("store: refusing to write an invalid conflict");
		return (STORE_ERROR);
	}
	store_dbt(&key, kbuf, klen);
	store_dbt(&data, rec, rlen);
	/* A new conflict counts; one that replaces another does not. */
	ret = db->put(db, txn->tid, &key, &data, DB_NOOVERWRITE);
	if (ret == 0)
		txn->d_conflicts++;
	else if (ret == DB_KEYEXIST)
		ret = db->put(db, txn->tid, &key, &data, 0);
	r = store_result(st, ret, "write conflict");
	free(rec);
	return (r == STORE_NOTFOUND ? STORE_ERROR : r);
}

/*
 * Read the conflict of a user on a number into *cf; release its holders
 * with store_conflict_clear.
 */
int
store_conflict_get(struct store_txn *txn, const unsigned char *numkey,
    const char *user_id, struct conflict *cf)
{
	struct store	*st = txn->st;
	DB		*db = st->db[STORE_DB_CONFLICTS];
	unsigned char	 kbuf[CLAIM_KEY_MAX];
	size_t		 klen;
	DBT		 key, data;
	int		 r;

	memset(cf, 0, sizeof *cf);
	if (st->failed)
		return (STORE_ERROR);
	if (store_claim_key(numkey, user_id, kbuf, &klen) != 0)
		return (STORE_NOTFOUND);
	store_dbt(&key, kbuf, klen);
	memset(&data, 0, sizeof data);
	r = store_result(st, db->get(db, txn->tid, &key, &data, DB_RMW),
	    "read conflict");
	if (r != STORE_OK)
		return (r);
	if (store_conflict_unpack(&key, &data, cf) != 0)
		return (store_result(st, STORE_CORRUPT, "read conflict"));
	return (STORE_OK);
}

/* Read every conflict; free the array with store_conflicts_free. */
int
store_conflicts(struct store_txn *txn, struct conflict **arrp, size_t *np)
{
	struct store	*st = txn->st;
	DB		*db = st->db[STORE_DB_CONFLICTS];
	struct conflict	*v = NULL;
	size_t		 n = 0, size = 0;
	DBC		*dbc;
	DBT		 key, data;
	int		 ret, r;

	*arrp = NULL;
	*np = 0;
	if (st->failed)
		return (STORE_ERROR);
	if ((ret = db->cursor(db, txn->tid, &dbc, 0)) != 0)
		return (store_result(st, ret, "open conflicts cursor"));
	memset(&key, 0, sizeof key);
	memset(&data, 0, sizeof data);
	while ((ret = dbc->get(dbc, &key, &data, DB_NEXT)) == 0) {
		if (n == size) {
			size = size == 0 ? 4 : size * 2;
			v = xreallocarray(v, size, sizeof *v);
		}
		if (store_conflict_unpack(&key, &data, &v[n]) != 0) {
			ret = STORE_CORRUPT;
			break;
		}
		n++;
	}
	if ((r = store_cursor_done(st, dbc, ret, "read conflicts")) !=
	    STORE_OK || n == 0) {
		store_conflicts_free(v, n);
		return (r);
	}
	*arrp = v;
	*np = n;
	return (STORE_OK);
}

/* Free an array of conflicts and their holders. */
void
store_conflicts_free(struct conflict *v, size_t n)
{
	size_t	i;

	for (i = 0; i < n; i++)
		store_conflict_clear(&v[i]);
	free(v);
}
