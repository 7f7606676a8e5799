/*
 * The store's claims and conflicts: numbers.db, one record per number with
 * every claim on it, the indexes Berkeley DB keeps for it (by user, by
 * expiry, by enrolment id), and conflicts.db.  The record formats and the
 * reasons for them are at the top of store.c.
 */
#include "config.h"

#include <sys/types.h>

#include <db.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

/* One entry of a number record, pointing into the record. */
struct store_entry {
	int			 state;
	int			 source;
	int64_t			 since;		/* ms */
	const unsigned char	*expires;	/* 8 bytes; NULL: not pending */
	const unsigned char	*user;
	size_t			 ulen;
	const unsigned char	*enrol;
	size_t			 elen;
};

/* Which index a key callback computes. */
enum store_index {
	STORE_INDEX_USER,
	STORE_INDEX_EXPIRY,
	STORE_INDEX_ENROL
};

/* What store_number_add keeps of a record. */
struct store_filter {
	const char	*user_id;	/* only this user's claim */
	const char	*enrol_id;	/* only claims with this enrolment id */
	const unsigned char *expires;	/* only pending claims expiring then */
	const char	*after;		/* only users after this one */
};

static uint64_t	store_siphash(const unsigned char *, const unsigned char *,
		    size_t);
static int	store_entry_next(const unsigned char **,
		    const unsigned char *, int, struct store_entry *);
static int	store_index_keys(const DBT *, DBT *, enum store_index);
static int	store_user_cmp(const char *, size_t, const char *, size_t);
static int	store_claim_key(const unsigned char *, const char *,
		    unsigned char *, size_t *);
static int	store_number_add(struct store_claims *, const DBT *,
		    const DBT *, const struct store_filter *);
static int	store_number_get(struct store_txn *, const unsigned char *,
		    struct store_claims *);
static int	store_number_write(struct store_txn *, const unsigned char *,
		    struct store_claims *);
static int	store_claims_finish(struct store *, DBC *, int,
		    struct store_claims *, struct claim **, size_t *,
		    const char *);
static int	store_claims_by_index(struct store_txn *, enum store_db,
		    const char *, size_t, const struct store_filter *,
		    const char *, struct claim **, size_t *);
static unsigned char *store_conflict_pack(const struct conflict *,
		    unsigned char *, size_t *, size_t *);
static int	store_conflict_unpack(const DBT *, const DBT *,
		    struct conflict *);
static const unsigned char *store_conflict_holders(const unsigned char *,
		    const unsigned char *, struct conflict *);
static int	store_conflict_removal(const unsigned char *,
		    const unsigned char *, struct conflict *);
static void	store_count_state(struct store_txn *, int, int);

#define ROTL64(x, b)	(((x) << (b)) | ((x) >> (64 - (b))))
#define SIP_ROUND(v0, v1, v2, v3) do {					\
	v0 += v1; v1 = ROTL64(v1, 13); v1 ^= v0; v0 = ROTL64(v0, 32);	\
	v2 += v3; v3 = ROTL64(v3, 16); v3 ^= v2;			\
	v0 += v3; v3 = ROTL64(v3, 21); v3 ^= v0;			\
	v2 += v1; v1 = ROTL64(v1, 17); v1 ^= v2; v2 = ROTL64(v2, 32);	\
} while (0)

/* Read 8 bytes as a little-endian integer, as SipHash does. */
static uint64_t
store_le64(const unsigned char *p)
{
	uint64_t	v = 0;
	int		i;

	for (i = 7; i >= 0; i--)
		v = (v << 8) | p[i];
	return (v);
}

/*
 * SipHash-2-4 (Aumasson and Bernstein) of len bytes at p under a 16-byte
 * key.  The user and enrolment indexes are keyed by it rather than by the
 * ids themselves: 8 bytes instead of ~30, whatever the id.  The key comes
 * from the hash key, so that nobody who does not hold it can choose ids
 * that pile up under one index key.
 */
static uint64_t
store_siphash(const unsigned char *key, const unsigned char *p, size_t len)
{
	uint64_t	k0 = store_le64(key), k1 = store_le64(key + 8), m;
	uint64_t	v0 = k0 ^ 0x736f6d6570736575ULL;
	uint64_t	v1 = k1 ^ 0x646f72616e646f6dULL;
	uint64_t	v2 = k0 ^ 0x6c7967656e657261ULL;
	uint64_t	v3 = k1 ^ 0x7465646279746573ULL;
	unsigned char	last[8];
	size_t		i, left = len % 8;

	for (i = 0; i + 8 <= len; i += 8) {
		m = store_le64(p + i);
		v3 ^= m;
		SIP_ROUND(v0, v1, v2, v3);
		SIP_ROUND(v0, v1, v2, v3);
		v0 ^= m;
	}
	memset(last, 0, sizeof last);
	memcpy(last, p + len - left, left);
	last[7] = (unsigned char)len;
	m = store_le64(last);
	v3 ^= m;
	SIP_ROUND(v0, v1, v2, v3);
	SIP_ROUND(v0, v1, v2, v3);
	v0 ^= m;
	v2 ^= 0xff;
	for (i = 0; i < 4; i++)
		SIP_ROUND(v0, v1, v2, v3);
	return (v0 ^ v1 ^ v2 ^ v3);
}

/* The index key of an id: its SipHash under the store's key, big-endian. */
void
store_index_hash(const void *id, size_t len, unsigned char *out)
{
	store_put_i64(out, (int64_t)store_siphash(store_index_key, id, len));
}

/* 1 if a number record of len bytes has a format this release reads. */
int
store_number_format_ok(const unsigned char *rec, size_t len)
{
	return (len >= NUMBER_OFF_ENTRIES && (rec[0] == NUMBER_FORMAT ||
	    rec[0] == NUMBER_FORMAT_2));
}

/*
 * Parse the entry at *pp of a record of that format, which must end by
 * end; advance *pp.  0, or -1 if the bytes are not an entry.  A format 2
 * 'since' (seconds) is read in milliseconds.
 */
static int
store_entry_next(const unsigned char **pp, const unsigned char *end,
    int format, struct store_entry *e)
{
	const unsigned char	*p = *pp;
	int			 i, fixed;

	fixed = format == NUMBER_FORMAT ? NUMBER_ENTRY_FIXED :
	    NUMBER_ENTRY_FIXED_2;
	if (end - p < fixed + 1)
		return (-1);
	e->state = p[0];
	e->source = p[1];
	for (e->since = 0, i = 2; i < fixed; i++)
		e->since = e->since << 8 | p[i];
	if (format != NUMBER_FORMAT)
		e->since *= 1000;
	p += fixed;
	if (e->state == CLAIM_PENDING) {
		if (end - p < STORE_TIME_LEN + 1)
			return (-1);
		e->expires = p;
		p += STORE_TIME_LEN;
	} else if (e->state == CLAIM_ACTIVE)
		e->expires = NULL;
	else
		return (-1);
	if (p[0] & 0x80) {
		if (end - p < 2)
			return (-1);
		e->ulen = (size_t)(p[0] & 0x7f) << 8 | p[1];
		p += 2;
	} else
		e->ulen = *p++;
	if (e->ulen == 0 || e->ulen > USER_ID_MAX ||
	    (size_t)(end - p) < e->ulen + 1)
		return (-1);
	e->user = p;
	p += e->ulen;
	e->elen = *p++;
	if (e->elen > ENROL_ID_MAX || (size_t)(end - p) < e->elen)
		return (-1);
	e->enrol = p;
	*pp = p + e->elen;
	return (0);
}

/*
 * Secondary key callbacks.  Each one clears skey first: on a delete,
 * Berkeley DB 5.3 (__dbc_del_primary) passes the same skey to every
 * secondary in turn, and after one returns DB_DONOTINDEX it carries
 * DB_DBT_MULTIPLE, which would make the next key be read as an array of
 * DBTs (a crash on deleting an active claim).
 */

/* Keys of numbers_user.db: the index hash of each holder's user id. */
int
store_user_key_cb(DB *sdb, const DBT *pkey, const DBT *pdata, DBT *skey)
{
	(void)sdb;
	(void)pkey;
	return (store_index_keys(pdata, skey, STORE_INDEX_USER));
}

/* Keys of numbers_expiry.db: the expiry of each pending claim. */
int
store_expiry_key_cb(DB *sdb, const DBT *pkey, const DBT *pdata, DBT *skey)
{
	(void)sdb;
	(void)pkey;
	return (store_index_keys(pdata, skey, STORE_INDEX_EXPIRY));
}

/* Keys of numbers_enrol.db: the index hash of each enrolment id. */
int
store_enrol_key_cb(DB *sdb, const DBT *pkey, const DBT *pdata, DBT *skey)
{
	(void)sdb;
	(void)pkey;
	return (store_index_keys(pdata, skey, STORE_INDEX_ENROL));
}

/*
 * The keys of one index for a number record: one per claim that has one,
 * each distinct value once (Berkeley DB wants no key twice for a record).
 * One key is a plain DBT; several are a DB_DBT_MULTIPLE array, allocated
 * with the keys after it, which Berkeley DB frees.
 */
static int
store_index_keys(const DBT *pdata, DBT *skey, enum store_index kind)
{
	const unsigned char	*p = pdata->data, *end = p + pdata->size;
	unsigned char		*keys = NULL, k[STORE_TIME_LEN];
	struct store_entry	 e;
	DBT			*arr;
	size_t			 n = 0, size = 0, i;

	memset(skey, 0, sizeof *skey);
	if (!store_number_format_ok(p, pdata->size))
		return (STORE_CORRUPT);
	for (p += NUMBER_OFF_ENTRIES; p < end;) {
		if (store_entry_next(&p, end,
		    ((const unsigned char *)pdata->data)[0], &e) != 0) {
			free(keys);
			return (STORE_CORRUPT);
		}
		if (kind == STORE_INDEX_USER)
			store_index_hash(e.user, e.ulen, k);
		else if (kind == STORE_INDEX_ENROL && e.elen > 0)
			store_index_hash(e.enrol, e.elen, k);
		else if (kind == STORE_INDEX_EXPIRY && e.expires != NULL)
			memcpy(k, e.expires, sizeof k);
		else
			continue;
		for (i = 0; i < n; i++)
			if (memcmp(keys + i * sizeof k, k, sizeof k) == 0)
				break;
		if (i < n)
			continue;
		if (n == size) {
			size = size == 0 ? 4 : size * 2;
			keys = xreallocarray(keys, size, sizeof k);
		}
		memcpy(keys + n++ * sizeof k, k, sizeof k);
	}
	if (n == 0)
		return (DB_DONOTINDEX);
	if (n == 1) {
		skey->data = keys;
		skey->size = sizeof k;
		skey->flags = DB_DBT_APPMALLOC;
		return (0);
	}
	arr = xcalloc(1, n * (sizeof *arr + sizeof k));
	for (i = 0; i < n; i++) {
		arr[i].data = (unsigned char *)(arr + n) + i * sizeof k;
		arr[i].size = sizeof k;
		memcpy(arr[i].data, keys + i * sizeof k, sizeof k);
	}
	free(keys);
	skey->data = arr;
	skey->size = (u_int32_t)n;
	skey->flags = DB_DBT_MULTIPLE | DB_DBT_APPMALLOC;
	return (0);
}

/* Order user ids as raw bytes, a shorter prefix first (as BDB orders keys). */
static int
store_user_cmp(const char *a, size_t alen, const char *b, size_t blen)
{
	int	c;

	if ((c = memcmp(a, b, alen < blen ? alen : blen)) != 0)
		return (c);
	return (alen < blen ? -1 : alen > blen);
}

/* Build a conflicts.db key; -1 if the user id is empty or too long. */
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

/*
 * Pack the n claims of one number (in user id order, n > 0) into a new
 * record; -1 if a field is out of range.
 */
int
store_number_pack(const struct claim *v, size_t n, unsigned char **recp,
    size_t *lenp)
{
	unsigned char	*rec, *p;
	const char	*last4 = "";
	size_t		 i, j, ulen, elen, size = NUMBER_OFF_ENTRIES;

	*recp = NULL;
	for (i = 0; i < n; i++) {
		ulen = strnlen(v[i].user_id, sizeof v[i].user_id);
		elen = strnlen(v[i].enrol_id, sizeof v[i].enrol_id);
		if (ulen == 0 || ulen > USER_ID_MAX || elen > ENROL_ID_MAX ||
		    (v[i].state != CLAIM_PENDING &&
		    v[i].state != CLAIM_ACTIVE) ||
		    v[i].source < 0 || v[i].source > UCHAR_MAX ||
		    v[i].since_ms < 0 || v[i].since_ms >= NUMBER_SINCE_MAX ||
		    strnlen(v[i].last4, sizeof v[i].last4) > LAST4_LEN)
			return (-1);
		if (i > 0 && store_user_cmp(v[i - 1].user_id,
		    strlen(v[i - 1].user_id), v[i].user_id, ulen) >= 0)
			return (-1);
		size += NUMBER_ENTRY_FIXED + (ulen < 0x80 ? 1 : 2) + ulen +
		    1 + elen;
		if (v[i].state == CLAIM_PENDING)
			size += STORE_TIME_LEN;
		if (last4[0] == '\0')
			last4 = v[i].last4;
	}
	rec = p = xcalloc(1, size);
	p[0] = NUMBER_FORMAT;
	memcpy(p + NUMBER_OFF_LAST4, last4, strlen(last4));
	p += NUMBER_OFF_ENTRIES;
	for (i = 0; i < n; i++) {
		ulen = strlen(v[i].user_id);
		elen = strlen(v[i].enrol_id);
		p[0] = (unsigned char)v[i].state;
		p[1] = (unsigned char)v[i].source;
		for (j = 0; j < NUMBER_ENTRY_FIXED - 2; j++)
			p[2 + j] = (unsigned char)((uint64_t)v[i].since_ms >>
			    8 * (NUMBER_ENTRY_FIXED - 3 - j));
		p += NUMBER_ENTRY_FIXED;
		if (v[i].state == CLAIM_PENDING) {
			store_put_i64(p, v[i].expires);
			p += STORE_TIME_LEN;
		}
		if (ulen >= 0x80)
			*p++ = (unsigned char)(0x80 | ulen >> 8);
		*p++ = (unsigned char)ulen;
		memcpy(p, v[i].user_id, ulen);
		p += ulen;
		*p++ = (unsigned char)elen;
		memcpy(p, v[i].enrol_id, elen);
		p += elen;
	}
	*recp = rec;
	*lenp = size;
	return (0);
}

/*
 * Append to sc the claims of a number record that pass the filter (NULL:
 * all of them).  STORE_CORRUPT (logged) if the record does not decode.
 */
static int
store_number_add(struct store_claims *sc, const DBT *key, const DBT *data,
    const struct store_filter *f)
{
	const unsigned char	*p = data->data, *end = p + data->size;
	struct store_entry	 e;
	struct claim		*c;
	size_t			 flen;

	if (key->size != NUMKEY_LEN || !store_number_format_ok(p, data->size))
		goto bad;
	for (p += NUMBER_OFF_ENTRIES; p < end;) {
		if (store_entry_next(&p, end, *(unsigned char *)data->data,
		    &e) != 0)
			goto bad;
		if (f != NULL && f->user_id != NULL &&
		    (e.ulen != strlen(f->user_id) ||
		    memcmp(e.user, f->user_id, e.ulen) != 0))
			continue;
		if (f != NULL && f->enrol_id != NULL &&
		    (e.elen != (flen = strlen(f->enrol_id)) ||
		    memcmp(e.enrol, f->enrol_id, flen) != 0))
			continue;
		if (f != NULL && f->expires != NULL && (e.expires == NULL ||
		    memcmp(e.expires, f->expires, STORE_TIME_LEN) != 0))
			continue;
		if (f != NULL && f->after != NULL &&
		    store_user_cmp((const char *)e.user, e.ulen, f->after,
		    strlen(f->after)) <= 0)
			continue;
		if (sc->n == sc->size) {
			sc->size = sc->size == 0 ? 4 : sc->size * 2;
			sc->v = xreallocarray(sc->v, sc->size, sizeof *sc->v);
		}
		c = &sc->v[sc->n++];
		memset(c, 0, sizeof *c);
		memcpy(c->numkey, key->data, NUMKEY_LEN);
		memcpy(c->user_id, e.user, e.ulen);
		c->state = e.state;
		c->source = e.source;
		c->since_ms = e.since;
		c->expires = e.expires != NULL ? store_get_i64(e.expires) : 0;
		memcpy(c->last4, (const unsigned char *)data->data +
		    NUMBER_OFF_LAST4, LAST4_LEN);
		memcpy(c->enrol_id, e.enrol, e.elen);
	}
	return (0);

bad:
	log_warnx("store: undecodable record in numbers.db (format %u, "
	    "%u bytes)", data->size > 0 ? ((unsigned char *)data->data)[0] : 0,
	    data->size);
	return (STORE_CORRUPT);
}

/*
 * Rewrite a number record of an older format in the current one: 0 and a
 * new record in *recp, 1 if it is current already, STORE_CORRUPT.
 */
int
store_number_repack(const DBT *key, const DBT *data, unsigned char **recp,
    size_t *lenp)
{
	struct store_claims	sc = { NULL, 0, 0 };
	int			r = 1;

	*recp = NULL;
	if (data->size > 0 && ((unsigned char *)data->data)[0] == NUMBER_FORMAT)
		return (1);
	if (store_number_add(&sc, key, data, NULL) != 0 || sc.n == 0 ||
	    store_number_pack(sc.v, sc.n, recp, lenp) != 0)
		r = STORE_CORRUPT;
	else
		r = 0;
	free(sc.v);
	return (r);
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

/*
 * Read every claim on a number into sc (which starts empty), taking a
 * write lock on its record: the check-and-reserve reads it, then writes.
 */
static int
store_number_get(struct store_txn *txn, const unsigned char *numkey,
    struct store_claims *sc)
{
	struct store	*st = txn->st;
	DB		*db = store_db(st, STORE_DB_NUMBERS);
	DBT		 key, data;
	int		 r;

	if (st->failed)
		return (STORE_ERROR);
	store_dbt(&key, numkey, NUMKEY_LEN);
	memset(&data, 0, sizeof data);
	r = store_result(st, db->get(db, txn->tid, &key, &data, DB_RMW),
	    "read claims by number");
	if (r == STORE_NOTFOUND)
		return (STORE_OK);
	if (r == STORE_OK && store_number_add(sc, &key, &data, NULL) != 0)
		r = store_result(st, STORE_CORRUPT, "read claims by number");
	return (r);
}

/* Write the claims of sc as the record of a number, or delete it if none. */
static int
store_number_write(struct store_txn *txn, const unsigned char *numkey,
    struct store_claims *sc)
{
	struct store	*st = txn->st;
	DB		*db = store_db(st, STORE_DB_NUMBERS);
	unsigned char	*rec;
	size_t		 len;
	DBT		 key, data;
	int		 r;

	store_dbt(&key, numkey, NUMKEY_LEN);
	if (sc->n == 0)
		return (store_result(st, db->del(db, txn->tid, &key, 0),
		    "delete claim"));
	if (store_number_pack(sc->v, sc->n, &rec, &len) != 0) {
		log_warnx("store: refusing to write an invalid claim");
		return (STORE_ERROR);
	}
	store_dbt(&data, rec, len);
	r = store_result(st, db->put(db, txn->tid, &key, &data, 0),
	    "write claim");
	free(rec);
	return (r == STORE_NOTFOUND ? STORE_ERROR : r);
}

/* Read every claim on a number, taking write locks (check-and-reserve). */
int
store_claims_by_number(struct store_txn *txn, const unsigned char *numkey,
    struct claim **arrp, size_t *np)
{
	struct store_claims	sc = { NULL, 0, 0 };
	int			r;

	*arrp = NULL;
	*np = 0;
	if ((r = store_number_get(txn, numkey, &sc)) != STORE_OK ||
	    sc.n == 0) {
		free(sc.v);
		return (r);
	}
	*arrp = sc.v;
	*np = sc.n;
	return (STORE_OK);
}

/*
 * Read the claims that pass the filter in the records under the index hash
 * of the string key (at most max bytes; an empty or longer one matches
 * nothing).  Other ids with the same hash land on the same index key: the
 * filter drops their claims.
 */
static int
store_claims_by_index(struct store_txn *txn, enum store_db which,
    const char *key, size_t max, const struct store_filter *f,
    const char *what, struct claim **arrp, size_t *np)
{
	struct store		*st = txn->st;
	DB			*db = store_db(st, which);
	struct store_claims	 sc = { NULL, 0, 0 };
	unsigned char		 h[INDEX_HASH_LEN];
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
	store_index_hash(key, len, h);
	store_dbt(&skey, h, sizeof h);
	memset(&pkey, 0, sizeof pkey);
	memset(&data, 0, sizeof data);
	for (op = DB_SET;; op = DB_NEXT_DUP) {
		ret = dbc->pget(dbc, &skey, &pkey, &data, op | DB_RMW);
		if (ret != 0)
			break;
		if ((ret = store_number_add(&sc, &pkey, &data, f)) != 0)
			break;
	}
	return (store_claims_finish(st, dbc, ret, &sc, arrp, np, what));
}

/* Read every claim of a user, through numbers_user.db. */
int
store_claims_by_user(struct store_txn *txn, const char *user_id,
    struct claim **arrp, size_t *np)
{
	struct store_filter	f = { user_id, NULL, NULL, NULL };

	return (store_claims_by_index(txn, STORE_DB_NUMBERS_USER, user_id,
	    USER_ID_MAX, &f, "read claims by user", arrp, np));
}

/* Read every claim with an enrolment id, through numbers_enrol.db. */
int
store_claims_by_enrol(struct store_txn *txn, const char *enrol_id,
    struct claim **arrp, size_t *np)
{
	struct store_filter	f = { NULL, enrol_id, NULL, NULL };

	return (store_claims_by_index(txn, STORE_DB_NUMBERS_ENROL, enrol_id,
	    ENROL_ID_MAX, &f, "read claims by enrolment id", arrp, np));
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
	struct store_claims	 sc = { NULL, 0, 0 };
	size_t			 i, ulen;
	int			 r, cmp = 1, old = 0;

	ulen = strnlen(c->user_id, sizeof c->user_id);
	if (ulen == 0 || ulen > USER_ID_MAX ||
	    c->since_ms < 0 || c->since_ms >= NUMBER_SINCE_MAX) {
		log_warnx("store: refusing to write an invalid claim");
		return (STORE_ERROR);
	}
	if ((r = store_number_get(txn, c->numkey, &sc)) != STORE_OK)
		goto done;
	for (i = 0; i < sc.n; i++)
		if ((cmp = store_user_cmp(sc.v[i].user_id,
		    strlen(sc.v[i].user_id), c->user_id, ulen)) >= 0)
			break;
	if (i < sc.n && cmp == 0) {
		old = sc.v[i].state;
		sc.v[i] = *c;
	} else {
		sc.v = xreallocarray(sc.v, sc.n + 1, sizeof *sc.v);
		memmove(&sc.v[i + 1], &sc.v[i], (sc.n - i) * sizeof *sc.v);
		sc.v[i] = *c;
		sc.n++;
	}
	if ((r = store_number_write(txn, c->numkey, &sc)) == STORE_OK)
		store_count_state(txn, old, c->state);
done:
	free(sc.v);
	return (r);
}

/* Delete a user's claim on a number; STORE_NOTFOUND if there is none. */
int
store_claim_del(struct store_txn *txn, const unsigned char *numkey,
    const char *user_id)
{
	struct store_claims	 sc = { NULL, 0, 0 };
	size_t			 i;
	int			 r, old;

	if ((r = store_number_get(txn, numkey, &sc)) != STORE_OK)
		goto done;
	for (i = 0; i < sc.n; i++)
		if (strcmp(sc.v[i].user_id, user_id) == 0)
			break;
	if (i == sc.n) {
		r = STORE_NOTFOUND;
		goto done;
	}
	old = sc.v[i].state;
	memmove(&sc.v[i], &sc.v[i + 1], (sc.n - i - 1) * sizeof *sc.v);
	sc.n--;
	r = store_number_write(txn, numkey, &sc);
	if (r == STORE_OK)
		store_count_state(txn, old, 0);
	else if (r == STORE_NOTFOUND)
		r = STORE_ERROR;
done:
	free(sc.v);
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
	struct store		*st = txn->st;
	DB			*db = store_db(st, STORE_DB_NUMBERS);
	struct store_claims	 sc = { NULL, 0, 0 };
	struct store_filter	 f = { NULL, NULL, NULL, NULL };
	DBC			*dbc;
	DBT			 key, data;
	u_int32_t		 op = DB_FIRST;
	size_t			 i;
	int			 ret, stop = 0;

	if (st->failed)
		return (STORE_ERROR);
	memset(&key, 0, sizeof key);
	if (after != NULL) {
		store_dbt(&key, after->numkey, NUMKEY_LEN);
		op = DB_SET_RANGE;
	}
	if ((ret = db->cursor(db, txn->tid, &dbc, 0)) != 0)
		return (store_result(st, ret, "open claims cursor"));
	memset(&data, 0, sizeof data);
	for (; !stop; op = DB_NEXT) {
		if ((ret = dbc->get(dbc, &key, &data, op)) != 0)
			break;
		f.after = op == DB_SET_RANGE && key.size == NUMKEY_LEN &&
		    memcmp(key.data, after->numkey, NUMKEY_LEN) == 0 ?
		    after->user_id : NULL;
		sc.n = 0;
		if ((ret = store_number_add(&sc, &key, &data, &f)) != 0)
			break;
		for (i = 0; i < sc.n && !stop; i++)
			stop = cb(&sc.v[i], arg) != 0;
	}
	free(sc.v);
	return (store_cursor_done(st, dbc, ret, "read every claim"));
}

/*
 * Read up to max pending claims (a few more when several expire at the
 * same second) that expire after 'after' and at or before now, oldest
 * first.
 */
int
store_claims_expired(struct store_txn *txn, int64_t after, int64_t now,
    size_t max, struct claim **arrp, size_t *np)
{
	struct store		*st = txn->st;
	DB			*db = store_db(st, STORE_DB_NUMBERS_EXPIRY);
	struct store_claims	 sc = { NULL, 0, 0 };
	struct store_filter	 f = { NULL, NULL, NULL, NULL };
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
		if (skey.size != STORE_TIME_LEN) {
			ret = STORE_CORRUPT;
			break;
		}
		if (store_get_i64(skey.data) > now)
			break;
		f.expires = skey.data;
		if ((ret = store_number_add(&sc, &pkey, &data, &f)) != 0)
			break;
	}
	return (store_claims_finish(st, dbc, ret, &sc, arrp, np,
	    "read expired claims"));
}

/*
 * Count the claims and the pending claims in numbers.db (at open, when the
 * last stop left no counts).  A Berkeley DB error or STORE_CORRUPT.
 */
int
store_claims_count(struct store *st, DB_TXN *tid, uint64_t *claims,
    uint64_t *pending)
{
	DB			*db = store_db(st, STORE_DB_NUMBERS);
	const unsigned char	*p, *end;
	struct store_entry	 e;
	DBC			*dbc;
	DBT			 key, data;
	int			 ret, r;

	*claims = *pending = 0;
	if ((ret = db->cursor(db, tid, &dbc, 0)) != 0)
		return (ret);
	memset(&key, 0, sizeof key);
	memset(&data, 0, sizeof data);
	while ((ret = dbc->get(dbc, &key, &data, DB_NEXT)) == 0) {
		p = data.data;
		end = p + data.size;
		if (!store_number_format_ok(p, data.size)) {
			ret = STORE_CORRUPT;
			break;
		}
		for (p += NUMBER_OFF_ENTRIES; p < end && ret == 0;) {
			if (store_entry_next(&p, end, *(unsigned char *)data.data,
			    &e) != 0)
				ret = STORE_CORRUPT;
			else {
				(*claims)++;
				if (e.state == CLAIM_PENDING)
					(*pending)++;
			}
		}
		if (ret != 0)
			break;
	}
	if (ret == DB_NOTFOUND)
		ret = 0;
	if ((r = dbc->close(dbc)) != 0 && ret == 0)
		ret = r;
	return (ret);
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
	size = CONFLICT_OFF_LOG + llen + 2 + CONFLICT_RM_LEN + mlen +
	    CONFLICT_RESOLVED_LEN;
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
	store_put_i64(p + CONFLICT_RM_LEN + mlen, cf->resolved);
	*rlen = size;
	return (rec);
}

/* Unpack a conflicts.db key and record; -1 (logged) if corrupt. */
static int
store_conflict_unpack(const DBT *key, const DBT *data, struct conflict *cf)
{
	const unsigned char	*k = key->data, *rec = data->data, *p, *end;
	size_t			 llen;

	memset(cf, 0, sizeof *cf);
	end = rec + data->size;
	if (key->size <= NUMKEY_LEN || key->size > CLAIM_KEY_MAX)
		goto bad;
	if (data->size < CONFLICT_OFF_LOG + 2 || (rec[0] != CONFLICT_FORMAT &&
	    rec[0] != CONFLICT_FORMAT_2 && rec[0] != CONFLICT_FORMAT_1))
		goto bad;
	if (rec[0] == CONFLICT_FORMAT) {
		if (data->size < CONFLICT_OFF_LOG + 2 + CONFLICT_RESOLVED_LEN)
			goto bad;
		end -= CONFLICT_RESOLVED_LEN;
		cf->resolved = store_get_i64(end);
	}
	llen = store_get_u16(rec + CONFLICT_OFF_LOG_LEN);
	if (llen > LOG_ID_MAX || data->size < CONFLICT_OFF_LOG + llen + 2)
		goto bad;
	memcpy(cf->numkey, k, NUMKEY_LEN);
	memcpy(cf->user_id, k + NUMKEY_LEN, key->size - NUMKEY_LEN);
	cf->since = store_get_i64(rec + CONFLICT_OFF_SINCE);
	memcpy(cf->last4, rec + CONFLICT_OFF_LAST4, LAST4_LEN);
	memcpy(cf->log_id, rec + CONFLICT_OFF_LOG, llen);
	p = store_conflict_holders(rec + CONFLICT_OFF_LOG + llen, end, cf);
	if (p == NULL)
		goto bad;
	if (rec[0] == CONFLICT_FORMAT_1 ? p != end :
	    store_conflict_removal(p, end, cf) != 0)
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
	DB		*db = store_db(st, STORE_DB_CONFLICTS);
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
	DB		*db = store_db(st, STORE_DB_CONFLICTS);
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
	DB		*db = store_db(st, STORE_DB_CONFLICTS);
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

/*
 * Read the conflicts recorded on one number, in user id order; free the
 * array with store_conflicts_free.  STORE_OK with none is *np == 0.
 */
int
store_conflicts_by_number(struct store_txn *txn, const unsigned char *numkey,
    struct conflict **arrp, size_t *np)
{
	struct store	*st = txn->st;
	DB		*db = store_db(st, STORE_DB_CONFLICTS);
	struct conflict	*v = NULL;
	size_t		 n = 0;
	unsigned char	 kbuf[NUMKEY_LEN];
	DBC		*dbc;
	DBT		 key, data;
	int		 ret, r, flag = DB_SET_RANGE;

	*arrp = NULL;
	*np = 0;
	if (st->failed)
		return (STORE_ERROR);
	if ((ret = db->cursor(db, txn->tid, &dbc, 0)) != 0)
		return (store_result(st, ret, "open conflicts cursor"));
	memcpy(kbuf, numkey, NUMKEY_LEN);
	store_dbt(&key, kbuf, NUMKEY_LEN);
	memset(&data, 0, sizeof data);
	for (; (ret = dbc->get(dbc, &key, &data, flag | DB_RMW)) == 0;
	    flag = DB_NEXT) {
		if (key.size <= NUMKEY_LEN ||
		    memcmp(key.data, numkey, NUMKEY_LEN) != 0)
			break;
		v = xreallocarray(v, n + 1, sizeof *v);
		if (store_conflict_unpack(&key, &data, &v[n]) != 0) {
			ret = STORE_CORRUPT;
			break;
		}
		n++;
	}
	if (ret == DB_NOTFOUND)
		ret = 0;
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
