/*
 * What the store keeps for the log stream and the Management API: the log
 * ids seen (seen.db and its index by date), release watermarks, the users
 * waiting for a verification, and the reservation windows of
 * max_reservations_per_user (limits.db).
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

static int	store_watermark_key(const char *, const unsigned char *,
		    unsigned char *, size_t *);
static int	store_verify_decode(const DBT *, unsigned char *);

/*
 * seen_date.db indexes seen.db by date (time -> log id, sorted duplicates),
 * for the prune.  Unlike the claim indexes it is kept by hand, in the same
 * transaction as seen.db: an associated secondary costs a put a third
 * search (Berkeley DB reads the primary record first, to find the index
 * keys to replace), and a seen log id is never rewritten, only added and
 * pruned.  The files are the same as when Berkeley DB kept the index
 * (schema 1 to 5 associated it): a release that still associates it reads
 * and writes the same records.
 *
 * Build the index from seen.db if it is empty and seen.db is not: that is
 * what associate's DB_CREATE did for a store whose seen_date.db had been
 * lost.  In the opening transaction.
 */
int
store_seen_index_build(struct store *st, DB_TXN *tid)
{
	DB	*seen = st->db[STORE_DB_SEEN];
	DB	*idx = st->db[STORE_DB_SEEN_DATE];
	DBC	*dbc;
	DBT	 key, data;
	int	 ret, cret;

	if ((ret = idx->cursor(idx, tid, &dbc, 0)) != 0)
		return (ret);
	memset(&key, 0, sizeof key);
	memset(&data, 0, sizeof data);
	ret = dbc->get(dbc, &key, &data, DB_FIRST);
	cret = dbc->close(dbc);
	if (ret != DB_NOTFOUND)
		return (ret != 0 ? ret : cret);
	if (cret != 0)
		return (cret);
	if ((ret = seen->cursor(seen, tid, &dbc, 0)) != 0)
		return (ret);
	while ((ret = dbc->get(dbc, &key, &data, DB_NEXT)) == 0) {
		if (data.size != STORE_TIME_LEN) {
			ret = DB_VERIFY_BAD;
			break;
		}
		if ((ret = idx->put(idx, tid, &data, &key, 0)) != 0 &&
		    ret != DB_KEYEXIST)
			break;
	}
	if (ret == DB_NOTFOUND || ret == DB_KEYEXIST)
		ret = 0;
	cret = dbc->close(dbc);
	return (ret != 0 ? ret : cret);
}

/* Remember a log id seen at now; STORE_EXISTS if it was seen before. */
int
store_seen_add(struct store_txn *txn, const char *log_id, int64_t now)
{
	struct store	*st = txn->st;
	DB		*db = store_db(st, STORE_DB_SEEN);
	DB		*idx = store_db(st, STORE_DB_SEEN_DATE);
	unsigned char	 tbuf[STORE_TIME_LEN];
	size_t		 len;
	DBT		 key, data;
	int		 ret, r;

	if (st->failed)
		return (STORE_ERROR);
	len = strnlen(log_id, LOG_ID_MAX + 1);
	if (len == 0 || len > LOG_ID_MAX || now < 0) {
		log_warnx("store: refusing to write an invalid seen log id");
		return (STORE_ERROR);
	}
	store_put_i64(tbuf, now);
	store_dbt(&key, log_id, len);
	store_dbt(&data, tbuf, sizeof tbuf);
	ret = db->put(db, txn->tid, &key, &data, DB_NOOVERWRITE);
	if (ret == DB_KEYEXIST)
		return (STORE_EXISTS);
	if (ret == 0)
		ret = idx->put(idx, txn->tid, &data, &key, 0);
	r = store_result(st, ret, "write seen log id");
	return (r == STORE_NOTFOUND ? STORE_ERROR : r);
}

/*
 * Forget up to max log ids seen before the given time, oldest first: each
 * from seen.db, then from the index, through the index's cursor.
 */
int
store_seen_prune(struct store_txn *txn, int64_t before, size_t max,
    size_t *prunedp)
{
	struct store	*st = txn->st;
	DB		*db = store_db(st, STORE_DB_SEEN);
	DB		*idx = store_db(st, STORE_DB_SEEN_DATE);
	DBC		*dbc;
	DBT		 skey, data;
	int		 ret = 0, r;

	*prunedp = 0;
	if (st->failed)
		return (STORE_ERROR);
	if ((ret = idx->cursor(idx, txn->tid, &dbc, 0)) != 0)
		return (store_result(st, ret, "open seen index cursor"));
	memset(&skey, 0, sizeof skey);
	memset(&data, 0, sizeof data);
	while (*prunedp < max) {
		if ((ret = dbc->get(dbc, &skey, &data, DB_NEXT | DB_RMW)) != 0)
			break;
		if (skey.size != STORE_TIME_LEN) {
			ret = STORE_CORRUPT;
			break;
		}
		if (store_get_i64(skey.data) >= before)
			break;
		/* An index entry without its log id only goes. */
		if ((ret = db->del(db, txn->tid, &data, 0)) != 0 &&
		    ret != DB_NOTFOUND)
			break;
		if ((ret = dbc->del(dbc, 0)) != 0)
			break;
		(*prunedp)++;
	}
	if ((r = store_cursor_done(st, dbc, ret, "prune seen log ids")) !=
	    STORE_OK)
		*prunedp = 0;
	return (r);
}

/*
 * Build a watermarks.db key: the user id, then for a number a NUL and the
 * number key.  -1 if the user id is empty or too long.
 */
static int
store_watermark_key(const char *user_id, const unsigned char *numkey,
    unsigned char *key, size_t *len)
{
	size_t	ulen;

	ulen = strnlen(user_id, USER_ID_MAX + 1);
	if (ulen == 0 || ulen > USER_ID_MAX)
		return (-1);
	memcpy(key, user_id, ulen);
	*len = ulen;
	if (numkey != NULL) {
		key[ulen] = '\0';
		memcpy(key + ulen + 1, numkey, NUMKEY_LEN);
		*len += 1 + NUMKEY_LEN;
	}
	return (0);
}

/* Read a user's release watermark, user-wide or for one number (ms). */
int
store_watermark_get(struct store_txn *txn, const char *user_id,
    const unsigned char *numkey, int64_t *datep)
{
	struct store	*st = txn->st;
	DB		*db = store_db(st, STORE_DB_WATERMARKS);
	unsigned char	 kbuf[WATERMARK_KEY_MAX];
	size_t		 klen;
	DBT		 key, data;
	int		 r;

	*datep = 0;
	if (st->failed)
		return (STORE_ERROR);
	if (store_watermark_key(user_id, numkey, kbuf, &klen) != 0)
		return (STORE_NOTFOUND);
	store_dbt(&key, kbuf, klen);
	memset(&data, 0, sizeof data);
	r = store_result(st, db->get(db, txn->tid, &key, &data, DB_RMW),
	    "read watermark");
	if (r != STORE_OK)
		return (r);
	if (data.size != STORE_TIME_LEN) {
		log_warnx("store: undecodable record in watermarks.db "
		    "(%u bytes)", data.size);
		return (STORE_ERROR);
	}
	*datep = store_get_i64(data.data);
	return (STORE_OK);
}

/* Raise a release watermark to date_ms; it never goes down. */
int
store_watermark_raise(struct store_txn *txn, const char *user_id,
    const unsigned char *numkey, int64_t date_ms)
{
	struct store	*st = txn->st;
	DB		*db = store_db(st, STORE_DB_WATERMARKS);
	unsigned char	 kbuf[WATERMARK_KEY_MAX], tbuf[STORE_TIME_LEN];
	size_t		 klen;
	int64_t		 cur;
	DBT		 key, data;
	int		 r;

	if (st->failed)
		return (STORE_ERROR);
	if (store_watermark_key(user_id, numkey, kbuf, &klen) != 0) {
		log_warnx("store: refusing to write an invalid watermark");
		return (STORE_ERROR);
	}
	r = store_watermark_get(txn, user_id, numkey, &cur);
	if (r == STORE_OK && cur >= date_ms)
		return (STORE_OK);
	if (r != STORE_OK && r != STORE_NOTFOUND)
		return (r);
	store_put_i64(tbuf, date_ms);
	store_dbt(&key, kbuf, klen);
	store_dbt(&data, tbuf, sizeof tbuf);
	r = store_result(st, db->put(db, txn->tid, &key, &data, 0),
	    "write watermark");
	return (r == STORE_NOTFOUND ? STORE_ERROR : r);
}

/*
 * Ask for a verification of a user through the Management API, adding
 * reasons to one already asked.  A new request beyond max requests waiting
 * is refused with STORE_FULL.
 */
int
store_verify_add(struct store_txn *txn, const char *user_id, int reasons,
    int64_t now, uint64_t max)
{
	struct store	*st = txn->st;
	DB		*db = store_db(st, STORE_DB_VERIFY);
	unsigned char	 rec[VERIFY_REC_LEN];
	DBT		 key, data;
	size_t		 len = strlen(user_id);
	int		 ret, r;

	if (st->failed)
		return (STORE_ERROR);
	if (len == 0 || len > USER_ID_MAX || reasons <= 0 || reasons > 0xff ||
	    now < 0) {
		log_warnx("store: refusing to write an invalid verification");
		return (STORE_ERROR);
	}
	store_dbt(&key, user_id, len);
	memset(&data, 0, sizeof data);
	ret = db->get(db, txn->tid, &key, &data, DB_RMW);
	if (ret == 0 && store_verify_decode(&data, rec) == 0) {
		if ((rec[1] | reasons) == rec[1] &&
		    data.size == VERIFY_REC_LEN)
			return (STORE_OK);
		rec[1] |= (unsigned char)reasons;
	} else if (ret == 0 || ret == DB_NOTFOUND) {
		/* New, or an undecodable record to overwrite. */
		if (ret == DB_NOTFOUND && store_count_verify(st) +
		    (uint64_t)txn->d_verify >= max)
			return (STORE_FULL);
		memset(rec, 0, sizeof rec);
		rec[0] = VERIFY_FORMAT;
		rec[1] = (unsigned char)reasons;
		store_put_i64(rec + 2, now);
		if (ret == DB_NOTFOUND)
			txn->d_verify++;
	} else
		return (store_result(st, ret, "read verification"));
	store_dbt(&data, rec, sizeof rec);
	r = store_result(st, db->put(db, txn->tid, &key, &data, 0),
	    "write verification");
	return (r == STORE_NOTFOUND ? STORE_ERROR : r);
}

/*
 * Decode a verification record into rec (VERIFY_REC_LEN bytes, format
 * 2: format, reasons, queued[8], tries[2], not_before[8]); a format 1
 * record (no retry yet) reads as 0 tries.  -1 if it does not decode.
 */
static int
store_verify_decode(const DBT *data, unsigned char *rec)
{
	const unsigned char	*p = data->data;

	if (data->size == VERIFY_REC_LEN && p[0] == VERIFY_FORMAT) {
		memcpy(rec, p, VERIFY_REC_LEN);
		return (0);
	}
	if (data->size != VERIFY_REC_LEN_1 || p[0] != VERIFY_FORMAT_1)
		return (-1);
	memset(rec, 0, VERIFY_REC_LEN);
	memcpy(rec, p, VERIFY_REC_LEN_1);
	rec[0] = VERIFY_FORMAT;
	return (0);
}

/*
 * Read the first verification waiting (in user id order): its user into
 * user_id (USER_ID_MAX + 1 bytes), its reasons and when it was asked.
 */
int
store_verify_first(struct store_txn *txn, char *user_id, int *reasons,
    int64_t *queued)
{
	struct verify_req	r;
	int			rv;

	rv = store_verify_next(txn, INT64_MAX, user_id, &r);
	*reasons = r.reasons;
	*queued = r.queued;
	return (rv);
}

/*
 * Read the verification to make next at now: the first one never tried
 * (in user id order), else the retried one due the longest; its user
 * into user_id (USER_ID_MAX + 1 bytes) and the request into *r.
 * STORE_NOTFOUND when none is due, with r->not_before the earliest time
 * one will be (0 if none waits), so that one user that keeps failing is
 * retried behind the others and never holds them up.
 */
int
store_verify_next(struct store_txn *txn, int64_t now, char *user_id,
    struct verify_req *r)
{
	struct store		*st = txn->st;
	DB			*db = store_db(st, STORE_DB_VERIFY);
	unsigned char		 rec[VERIFY_REC_LEN];
	int64_t			 nb, best = -1;
	DBC			*dbc;
	DBT			 key, data;
	int			 ret;

	memset(r, 0, sizeof *r);
	if (st->failed)
		return (STORE_ERROR);
	if ((ret = db->cursor(db, txn->tid, &dbc, 0)) != 0)
		return (store_result(st, ret, "open verification cursor"));
	memset(&key, 0, sizeof key);
	memset(&data, 0, sizeof data);
	while ((ret = dbc->get(dbc, &key, &data, DB_NEXT)) == 0) {
		if (key.size == 0 || key.size > USER_ID_MAX ||
		    store_verify_decode(&data, rec) != 0) {
			ret = STORE_CORRUPT;
			break;
		}
		nb = store_get_i64(rec + 12);
		if (nb > now) {
			if (r->not_before == 0 || nb < r->not_before)
				r->not_before = nb;
			continue;
		}
		if (best >= 0 && nb >= best)
			continue;
		best = nb;
		memcpy(user_id, key.data, key.size);
		user_id[key.size] = '\0';
		r->reasons = rec[1];
		r->queued = store_get_i64(rec + 2);
		r->tries = (int)store_get_u16(rec + 10);
		if (r->tries == 0)
			break;		/* never tried: first in line */
	}
	ret = store_cursor_done(st, dbc, ret, "read verification");
	if (ret == STORE_OK && best < 0)
		return (STORE_NOTFOUND);
	if (ret == STORE_OK)
		r->not_before = 0;
	return (ret);
}

/*
 * Put a user's verification behind the others: tried tries times, not
 * before not_before.  STORE_NOTFOUND if none waits.
 */
int
store_verify_retry(struct store_txn *txn, const char *user_id, int tries,
    int64_t not_before)
{
	struct store	*st = txn->st;
	DB		*db = store_db(st, STORE_DB_VERIFY);
	unsigned char	 rec[VERIFY_REC_LEN];
	DBT		 key, data;
	size_t		 len = strlen(user_id);
	int		 ret, r;

	if (st->failed)
		return (STORE_ERROR);
	if (len == 0 || len > USER_ID_MAX || tries < 0 || tries > 0xffff ||
	    not_before < 0)
		return (STORE_ERROR);
	store_dbt(&key, user_id, len);
	memset(&data, 0, sizeof data);
	ret = db->get(db, txn->tid, &key, &data, DB_RMW);
	if (ret != 0)
		return (store_result(st, ret, "read verification"));
	if (store_verify_decode(&data, rec) != 0)
		return (store_result(st, STORE_CORRUPT, "read verification"));
	store_put_u16(rec + 10, (size_t)tries);
	store_put_i64(rec + 12, not_before);
	store_dbt(&data, rec, sizeof rec);
	r = store_result(st, db->put(db, txn->tid, &key, &data, 0),
	    "write verification");
	return (r == STORE_NOTFOUND ? STORE_ERROR : r);
}

/* Forget a user's verification request (STORE_OK if there was none). */
int
store_verify_del(struct store_txn *txn, const char *user_id)
{
	struct store	*st = txn->st;
	DB		*db = store_db(st, STORE_DB_VERIFY);
	DBT		 key;
	size_t		 len = strlen(user_id);
	int		 ret;

	if (st->failed)
		return (STORE_ERROR);
	if (len == 0 || len > USER_ID_MAX)
		return (STORE_OK);
	store_dbt(&key, user_id, len);
	ret = db->del(db, txn->tid, &key, 0);
	if (ret == 0)
		txn->d_verify--;
	if (ret == DB_NOTFOUND)
		return (STORE_OK);
	return (store_result(st, ret, "delete verification"));
}

/*
 * Read a user's reservation window: when it started and how many numbers
 * were asked for in it.  STORE_NOTFOUND if there is none (or it does not
 * decode: it is only a counter, and a fresh one is safe).
 */
int
store_limit_get(struct store_txn *txn, const char *user_id, int64_t *start,
    uint32_t *count)
{
	struct store		*st = txn->st;
	DB			*db = store_db(st, STORE_DB_LIMITS);
	const unsigned char	*rec;
	DBT			 key, data;
	size_t			 len = strlen(user_id);
	int			 ret;

	if (st->failed)
		return (STORE_ERROR);
	if (len == 0 || len > USER_ID_MAX)
		return (STORE_NOTFOUND);
	store_dbt(&key, user_id, len);
	memset(&data, 0, sizeof data);
	ret = db->get(db, txn->tid, &key, &data, DB_RMW);
	if (ret != 0)
		return (store_result(st, ret, "read reservation window"));
	rec = data.data;
	if (data.size != LIMIT_REC_LEN || rec[0] != LIMIT_FORMAT)
		return (STORE_NOTFOUND);
	*start = store_get_i64(rec + 1);
	*count = (uint32_t)rec[9] << 24 | (uint32_t)rec[10] << 16 |
	    (uint32_t)rec[11] << 8 | rec[12];
	return (STORE_OK);
}

/* Write a user's reservation window. */
int
store_limit_put(struct store_txn *txn, const char *user_id, int64_t start,
    uint32_t count)
{
	struct store	*st = txn->st;
	DB		*db = store_db(st, STORE_DB_LIMITS);
	unsigned char	 rec[LIMIT_REC_LEN];
	DBT		 key, data;
	size_t		 len = strlen(user_id);
	int		 r;

	if (st->failed)
		return (STORE_ERROR);
	if (len == 0 || len > USER_ID_MAX || start < 0) {
		log_warnx("store: refusing to write an invalid reservation "
		    "window");
		return (STORE_ERROR);
	}
	rec[0] = LIMIT_FORMAT;
	store_put_i64(rec + 1, start);
	rec[9] = count >> 24;
	rec[10] = (count >> 16) & 0xff;
	rec[11] = (count >> 8) & 0xff;
	rec[12] = count & 0xff;
	store_dbt(&key, user_id, len);
	store_dbt(&data, rec, sizeof rec);
	r = store_result(st, db->put(db, txn->tid, &key, &data, 0),
	    "write reservation window");
	return (r == STORE_NOTFOUND ? STORE_ERROR : r);
}

/*
 * Walk on through the reservation windows from where the last walk
 * stopped, looking at up to max of them, and delete those that started
 * before the given time (they no longer limit anyone).  *wrapped is set
 * when the walk reached the end and will start again from the first.  The
 * windows have no index by date: a walk in key order keeps each
 * reservation at one write, and a window left over for a while costs only
 * its few bytes.  The position is kept in memory; an aborted transaction
 * may skip a stretch, which the next pass covers.
 */
int
store_limits_prune(struct store_txn *txn, int64_t before, size_t max,
    size_t *prunedp, int *wrapped)
{
	struct store		*st = txn->st;
	DB			*db = store_db(st, STORE_DB_LIMITS);
	const unsigned char	*rec;
	DBC			*dbc;
	DBT			 key, data;
	size_t			 seen = 0;
	int			 ret, r, flag;

	*prunedp = 0;
	*wrapped = 0;
	if (st->failed)
		return (STORE_ERROR);
	if ((ret = db->cursor(db, txn->tid, &dbc, 0)) != 0)
		return (store_result(st, ret, "open reservation cursor"));
	memset(&key, 0, sizeof key);
	memset(&data, 0, sizeof data);
	if (st->limits_next_len > 0) {
		store_dbt(&key, st->limits_next, st->limits_next_len);
		flag = DB_SET_RANGE;
	} else
		flag = DB_FIRST;
	for (; seen < max; flag = DB_NEXT) {
		if ((ret = dbc->get(dbc, &key, &data, flag | DB_RMW)) != 0)
			break;
		seen++;
		rec = data.data;
		if (data.size != LIMIT_REC_LEN || rec[0] != LIMIT_FORMAT ||
		    store_get_i64(rec + 1) < before) {
			if ((ret = dbc->del(dbc, 0)) != 0)
				break;
			(*prunedp)++;
		}
	}
	if (ret == 0 && key.size > 0 && key.size <= USER_ID_MAX) {
		/* Resume after this key: it plus a NUL is the next one up. */
		memcpy(st->limits_next, key.data, key.size);
		st->limits_next_len = key.size;
		if (key.size < USER_ID_MAX)
			st->limits_next[st->limits_next_len++] = '\0';
	} else if (ret == DB_NOTFOUND) {
		st->limits_next_len = 0;
		*wrapped = 1;
	}
	if ((r = store_cursor_done(st, dbc, ret, "prune reservation "
	    "windows")) != STORE_OK)
		*prunedp = 0;
	return (r);
}
