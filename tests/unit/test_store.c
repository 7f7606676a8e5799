/*
 * Unit tests for store.c: each test opens its own store in a fresh
 * directory under /tmp and removes it afterwards.
 */
#include "config.h"

#include <sys/types.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>

#include <db.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "log.h"
#include "phoneclaimd.h"

/* Claims and seen ids written by the big transaction test. */
#define BIG_N	30000

struct fixture {
	char		 tmp[64];
	char		 dir[128];
	struct store	*st;
};

static int	setup(void **);
static int	teardown(void **);
static int	rm_cb(const char *, const struct stat *, int, struct FTW *);
static void	numkey(unsigned char *, int);
static void	mkclaim(struct claim *, const unsigned char *, const char *,
		    int, int64_t, int64_t);
static void	st_open(struct fixture *);
static void	st_reopen(struct fixture *);
static void	put_claims(struct store *, const struct claim *, size_t);
static size_t	get_by_number(struct store *, const unsigned char *,
		    struct claim **);
static size_t	get_by_user(struct store *, const char *, struct claim **);
static size_t	get_expired(struct store *, int64_t, size_t,
		    struct claim **);
static int	find_user(const struct claim *, size_t, const char *);
static void	assert_claim_equal(const struct claim *,
		    const struct claim *);
static void	assert_conflict_equal(const struct conflict *,
		    const struct conflict *);
static void	count_cb(void *);
static void	quiet_cb(const DB_ENV *, const char *, const char *);
static int	crash_child(const char *);
static int	deadlock_child(const char *, int, int);
static int	panic_env(const char *);
static int	panic_child(const char *);
static int	seen_add(struct store *, const char *, int64_t);
static int	seen_known(struct store *, const char *);
static size_t	seen_prune(struct store *, int64_t, size_t);
static size_t	get_by_enrol(struct store *, const char *, struct claim **);
static int	wm_get(struct store *, const char *, const unsigned char *,
		    int64_t *);
static void	wm_raise(struct store *, const char *, const unsigned char *,
		    int64_t);
static int	raw_open(const char *, const char *, DB_ENV **, DB **);
static size_t	raw_count(const char *, const char *);
static int	raw_get(const char *, const char *, const void *, size_t,
		    unsigned char *, size_t *);
static void	capture_begin(struct fixture *, int *);
static char	*capture_end(struct fixture *, int);
static double	now_s(void);
static void	big_claim(struct claim *, int);
static void	assert_counts(struct store *, uint64_t, uint64_t, uint64_t,
		    uint64_t);
static void	put_conflict(struct store_txn *, int, const char *);
static uint64_t	verify_waiting(struct store *);
static void	raw_meta_put(struct fixture *, const char *, const char *);
static int	walk_cb(const struct claim *, void *);

/* Make a fresh temporary directory; the state dir inside is not created. */
static int
setup(void **state)
{
	struct fixture	*f;

	if ((f = calloc(1, sizeof *f)) == NULL)
		return (-1);
	snprintf(f->tmp, sizeof f->tmp, "/tmp/test_store.XXXXXX");
	if (mkdtemp(f->tmp) == NULL) {
		free(f);
		return (-1);
	}
	snprintf(f->dir, sizeof f->dir, "%s/state", f->tmp);
	*state = f;
	return (0);
}

/* Close the store and remove the temporary directory. */
static int
teardown(void **state)
{
	struct fixture	*f = *state;

	store_close(f->st);
	nftw(f->tmp, rm_cb, 8, FTW_DEPTH | FTW_PHYS);
	free(f);
	return (0);
}

/* Remove one file or directory. */
static int
rm_cb(const char *path, const struct stat *sb, int type, struct FTW *ftw)
{
	(void)sb;
	(void)type;
	(void)ftw;
	return (remove(path));
}

/* Fill a number key from a seed. */
static void
numkey(unsigned char *k, int seed)
{
	int	i;

	for (i = 0; i < NUMKEY_LEN; i++)
		k[i] = (unsigned char)(seed * 31 + i * 7);
}

/* Fill a claim. */
static void
mkclaim(struct claim *c, const unsigned char *k, const char *user, int state,
    int64_t since, int64_t expires)
{
	memset(c, 0, sizeof *c);
	memcpy(c->numkey, k, NUMKEY_LEN);
	snprintf(c->user_id, sizeof c->user_id, "%s", user);
	c->state = state;
	c->source = CLAIM_SRC_ENROLLMENT;
	c->since_ms = since;
	c->expires = expires;
	snprintf(c->last4, sizeof c->last4, "4567");
}

/* Open the fixture's store, failing the test with the cause. */
static void
st_open(struct fixture *f)
{
	char	*cause = NULL;

	f->st = store_open(f->dir, &cause);
	if (f->st == NULL)
		fail_msg("store_open: %s", cause);
	assert_null(cause);
}

/* Close and open again (the open runs recovery). */
static void
st_reopen(struct fixture *f)
{
	store_close(f->st);
	f->st = NULL;
	st_open(f);
}

/* Write claims in one transaction, commit and flush. */
static void
put_claims(struct store *st, const struct claim *c, size_t n)
{
	struct store_txn	*txn;
	size_t			 i;

	assert_int_equal(store_txn_begin(st, &txn), STORE_OK);
	for (i = 0; i < n; i++)
		assert_int_equal(store_claim_put(txn, &c[i]), STORE_OK);
	assert_int_equal(store_txn_commit(txn), STORE_OK);
	assert_int_equal(store_flush(st), STORE_OK);
}

/* Read the claims on a number in a transaction of its own. */
static size_t
get_by_number(struct store *st, const unsigned char *k, struct claim **arr)
{
	struct store_txn	*txn;
	size_t			 n;

	assert_int_equal(store_txn_begin(st, &txn), STORE_OK);
	assert_int_equal(store_claims_by_number(txn, k, arr, &n), STORE_OK);
	assert_int_equal(store_txn_commit(txn), STORE_OK);
	if (n == 0)
		assert_null(*arr);
	return (n);
}

/* Read a user's claims in a transaction of its own. */
static size_t
get_by_user(struct store *st, const char *user, struct claim **arr)
{
	struct store_txn	*txn;
	size_t			 n;

	assert_int_equal(store_txn_begin(st, &txn), STORE_OK);
	assert_int_equal(store_claims_by_user(txn, user, arr, &n), STORE_OK);
	assert_int_equal(store_txn_commit(txn), STORE_OK);
	if (n == 0)
		assert_null(*arr);
	return (n);
}

/* Read expired claims in a transaction of its own. */
static size_t
get_expired(struct store *st, int64_t now, size_t max, struct claim **arr)
{
	struct store_txn	*txn;
	size_t			 n;

	assert_int_equal(store_txn_begin(st, &txn), STORE_OK);
	assert_int_equal(store_claims_expired(txn, -1, now, max, arr, &n),
	    STORE_OK);
	assert_int_equal(store_txn_commit(txn), STORE_OK);
	if (n == 0)
		assert_null(*arr);
	return (n);
}

/* Return the index of a user's claim in an array, or -1. */
static int
find_user(const struct claim *arr, size_t n, const char *user)
{
	size_t	i;

	for (i = 0; i < n; i++) {
		if (strcmp(arr[i].user_id, user) == 0)
			return ((int)i);
	}
	return (-1);
}

/* Compare every field of two claims. */
static void
assert_claim_equal(const struct claim *a, const struct claim *b)
{
	assert_memory_equal(a->numkey, b->numkey, NUMKEY_LEN);
	assert_string_equal(a->user_id, b->user_id);
	assert_int_equal(a->state, b->state);
	assert_int_equal(a->source, b->source);
	assert_true(a->since_ms == b->since_ms);
	assert_true(a->expires == b->expires);
	assert_string_equal(a->last4, b->last4);
	assert_string_equal(a->enrol_id, b->enrol_id);
}

/* Compare every field of two conflicts, holders included. */
static void
assert_conflict_equal(const struct conflict *a, const struct conflict *b)
{
	size_t	i;

	assert_memory_equal(a->numkey, b->numkey, NUMKEY_LEN);
	assert_string_equal(a->user_id, b->user_id);
	assert_string_equal(a->last4, b->last4);
	assert_true(a->since == b->since);
	assert_string_equal(a->log_id, b->log_id);
	assert_int_equal(a->nholders, b->nholders);
	for (i = 0; i < a->nholders; i++)
		assert_string_equal(a->holders[i], b->holders[i]);
}

/* Claims survive close and reopen. */
static void
test_reopen_keeps_data(void **state)
{
	struct fixture	*f = *state;
	struct claim	 c[3], *arr;
	unsigned char	 k1[NUMKEY_LEN], k2[NUMKEY_LEN];
	struct stat	 sb;
	char		 path[192];
	size_t		 n;

	st_open(f);
	assert_int_equal(stat(f->dir, &sb), 0);
	assert_int_equal(sb.st_mode & 0777, 0700);
	numkey(k1, 1);
	numkey(k2, 2);
	mkclaim(&c[0], k1, "auth0|alice", CLAIM_ACTIVE, 1000, 0);
	mkclaim(&c[1], k1, "auth0|bob", CLAIM_PENDING, 1001, 1601);
	mkclaim(&c[2], k2, "auth0|alice", CLAIM_PENDING, 1002, 1602);
	snprintf(c[0].enrol_id, sizeof c[0].enrol_id, "phone|dev_abc");
	c[2].source = CLAIM_SRC_LOGSTREAM;
	put_claims(f->st, c, 3);
	st_reopen(f);

	n = get_by_number(f->st, k1, &arr);
	assert_int_equal(n, 2);
	assert_claim_equal(&arr[find_user(arr, n, "auth0|alice")], &c[0]);
	assert_claim_equal(&arr[find_user(arr, n, "auth0|bob")], &c[1]);
	free(arr);
	n = get_by_number(f->st, k2, &arr);
	assert_int_equal(n, 1);
	assert_claim_equal(&arr[0], &c[2]);
	free(arr);
	n = get_expired(f->st, 2000, 10, &arr);
	assert_int_equal(n, 2);
	free(arr);

	snprintf(path, sizeof path, "%s/numbers.db", f->dir);
	assert_int_equal(stat(path, &sb), 0);
	assert_int_equal(sb.st_mode & 077, 0);
}

/* By number: every user on the number, nothing from neighbouring keys. */
static void
test_by_number(void **state)
{
	struct fixture	*f = *state;
	struct claim	 c[6], *arr;
	unsigned char	 k[NUMKEY_LEN], before[NUMKEY_LEN];
	unsigned char	 after[NUMKEY_LEN], other[NUMKEY_LEN];
	size_t		 n;

	st_open(f);
	numkey(k, 3);
	memcpy(before, k, NUMKEY_LEN);
	before[NUMKEY_LEN - 1]--;
	memcpy(after, k, NUMKEY_LEN);
	after[NUMKEY_LEN - 1]++;
	numkey(other, 4);
	mkclaim(&c[0], k, "u1", CLAIM_ACTIVE, 1, 0);
	mkclaim(&c[1], k, "u2", CLAIM_PENDING, 2, 100);
	mkclaim(&c[2], k, "u3", CLAIM_ACTIVE, 3, 0);
	mkclaim(&c[3], before, "u1", CLAIM_ACTIVE, 4, 0);
	mkclaim(&c[4], after, "u0", CLAIM_ACTIVE, 5, 0);
	mkclaim(&c[5], other, "u9", CLAIM_ACTIVE, 6, 0);
	put_claims(f->st, c, 6);

	n = get_by_number(f->st, k, &arr);
	assert_int_equal(n, 3);
	assert_string_equal(arr[0].user_id, "u1");
	assert_string_equal(arr[1].user_id, "u2");
	assert_string_equal(arr[2].user_id, "u3");
	assert_claim_equal(&arr[1], &c[1]);
	free(arr);
	n = get_by_number(f->st, after, &arr);
	assert_int_equal(n, 1);
	assert_string_equal(arr[0].user_id, "u0");
	free(arr);

	numkey(k, 5);
	n = get_by_number(f->st, k, &arr);
	assert_int_equal(n, 0);
	memset(k, 0xff, NUMKEY_LEN);
	n = get_by_number(f->st, k, &arr);
	assert_int_equal(n, 0);
}

/* By user: the user's claims across numbers, exact match of the id. */
static void
test_by_user(void **state)
{
	struct fixture	*f = *state;
	struct claim	 c[5], *arr;
	unsigned char	 k[3][NUMKEY_LEN];
	size_t		 n;
	int		 i;

	st_open(f);
	for (i = 0; i < 3; i++)
		numkey(k[i], 10 + i);
	mkclaim(&c[0], k[0], "auth0|a", CLAIM_ACTIVE, 1, 0);
	mkclaim(&c[1], k[1], "auth0|a", CLAIM_PENDING, 2, 50);
	mkclaim(&c[2], k[2], "auth0|a", CLAIM_ACTIVE, 3, 0);
	mkclaim(&c[3], k[0], "auth0|ab", CLAIM_ACTIVE, 4, 0);
	mkclaim(&c[4], k[1], "auth0|", CLAIM_ACTIVE, 5, 0);
	put_claims(f->st, c, 5);

	n = get_by_user(f->st, "auth0|a", &arr);
	assert_int_equal(n, 3);
	for (i = 0; i < 3; i++) {
		assert_string_equal(arr[i].user_id, "auth0|a");
		assert_claim_equal(&arr[i], &c[i]);
	}
	free(arr);
	n = get_by_user(f->st, "auth0|ab", &arr);
	assert_int_equal(n, 1);
	assert_claim_equal(&arr[0], &c[3]);
	free(arr);
	assert_int_equal(get_by_user(f->st, "auth0|b", &arr), 0);
	assert_int_equal(get_by_user(f->st, "", &arr), 0);
}

/* Delete removes the claim from every index; a second delete: NOTFOUND. */
static void
test_delete(void **state)
{
	struct fixture		*f = *state;
	struct store_txn	*txn;
	struct claim		 c[2], *arr;
	unsigned char		 k[NUMKEY_LEN];

	st_open(f);
	numkey(k, 20);
	mkclaim(&c[0], k, "keep", CLAIM_PENDING, 1, 100);
	mkclaim(&c[1], k, "gone", CLAIM_PENDING, 1, 100);
	put_claims(f->st, c, 2);

	assert_int_equal(store_txn_begin(f->st, &txn), STORE_OK);
	assert_int_equal(store_claim_del(txn, k, "gone"), STORE_OK);
	assert_int_equal(store_claim_del(txn, k, "gone"), STORE_NOTFOUND);
	assert_int_equal(store_claim_del(txn, k, "nobody"), STORE_NOTFOUND);
	assert_int_equal(store_claim_del(txn, k, ""), STORE_NOTFOUND);
	assert_int_equal(store_txn_commit(txn), STORE_OK);

	assert_int_equal(get_by_number(f->st, k, &arr), 1);
	assert_string_equal(arr[0].user_id, "keep");
	free(arr);
	assert_int_equal(get_by_user(f->st, "gone", &arr), 0);
	assert_int_equal(get_expired(f->st, 1000, 10, &arr), 1);
	assert_string_equal(arr[0].user_id, "keep");
	free(arr);
}

/* Overwriting pending with active drops it from the expiry index. */
static void
test_overwrite_updates_expiry(void **state)
{
	struct fixture	*f = *state;
	struct claim	 c[2], *arr;
	unsigned char	 k[NUMKEY_LEN];

	st_open(f);
	numkey(k, 30);
	mkclaim(&c[0], k, "p", CLAIM_PENDING, 1, 100);
	mkclaim(&c[1], k, "q", CLAIM_PENDING, 1, 100);
	put_claims(f->st, c, 2);
	assert_int_equal(get_expired(f->st, 100, 10, &arr), 2);
	free(arr);

	/* Pushing the expiry moves the index entry, no duplicate left. */
	c[1].expires = 200;
	put_claims(f->st, &c[1], 1);
	assert_int_equal(get_expired(f->st, 150, 10, &arr), 1);
	assert_string_equal(arr[0].user_id, "p");
	free(arr);
	assert_int_equal(get_expired(f->st, 300, 10, &arr), 2);
	free(arr);

	c[0].state = CLAIM_ACTIVE;
	c[0].expires = 0;
	put_claims(f->st, &c[0], 1);
	assert_int_equal(get_expired(f->st, 300, 10, &arr), 1);
	assert_string_equal(arr[0].user_id, "q");
	free(arr);
	assert_int_equal(get_by_number(f->st, k, &arr), 2);
	assert_claim_equal(&arr[find_user(arr, 2, "p")], &c[0]);
	free(arr);
	st_reopen(f);
	assert_int_equal(get_expired(f->st, 300, 10, &arr), 1);
	free(arr);
}

/* Expired claims come in expiry order, at most max, pending only. */
static void
test_expired_order_max(void **state)
{
	struct fixture	*f = *state;
	struct claim	 c[8], *arr;
	unsigned char	 k[NUMKEY_LEN];
	static const int64_t exp[] = { 50, 10, 30, 20, 40, 30 };
	char		 user[16];
	size_t		 n;
	int		 i;

	st_open(f);
	for (i = 0; i < 6; i++) {
		numkey(k, 40 + i);
		snprintf(user, sizeof user, "user%d", i);
		mkclaim(&c[i], k, user, CLAIM_PENDING, 1, exp[i]);
	}
	numkey(k, 60);
	mkclaim(&c[6], k, "active", CLAIM_ACTIVE, 1, 0);
	mkclaim(&c[7], k, "later", CLAIM_PENDING, 1, 1000000);
	put_claims(f->st, c, 8);

	n = get_expired(f->st, 35, 10, &arr);
	assert_int_equal(n, 4);
	assert_true(arr[0].expires == 10);
	assert_true(arr[1].expires == 20);
	assert_true(arr[2].expires == 30);
	assert_true(arr[3].expires == 30);
	assert_int_not_equal(find_user(arr, n, "user2"), -1);
	assert_int_not_equal(find_user(arr, n, "user5"), -1);
	free(arr);
	n = get_expired(f->st, 35, 2, &arr);
	assert_int_equal(n, 2);
	assert_string_equal(arr[0].user_id, "user1");
	assert_string_equal(arr[1].user_id, "user3");
	free(arr);
	assert_int_equal(get_expired(f->st, 35, 0, &arr), 0);
	assert_int_equal(get_expired(f->st, 9, 10, &arr), 0);
	n = get_expired(f->st, 2000000, 100, &arr);
	assert_int_equal(n, 7);
	assert_string_equal(arr[6].user_id, "later");
	assert_int_equal(find_user(arr, n, "active"), -1);
	free(arr);
}

/* User ids with any byte but NUL, up to 512 bytes. */
static void
test_user_id_bytes(void **state)
{
	struct fixture	*f = *state;
	struct claim	 c[4], *arr;
	unsigned char	 k[NUMKEY_LEN];
	char		 big[USER_ID_MAX + 1], all[256];
	size_t		 n;
	int		 i;

	st_open(f);
	numkey(k, 70);
	memset(big, 'x', USER_ID_MAX);
	big[USER_ID_MAX] = '\0';
	for (i = 1; i < 256; i++)
		all[i - 1] = (char)i;
	all[255] = '\0';
	mkclaim(&c[0], k, "auth0|507f1f77bcf86cd799439011", CLAIM_ACTIVE, 1,
	    0);
	mkclaim(&c[1], k, big, CLAIM_ACTIVE, 2, 0);
	mkclaim(&c[2], k, all, CLAIM_PENDING, 3, 10);
	mkclaim(&c[3], k, "sms|\xc3\xa9t\xc3\xa9 | \"x\"", CLAIM_ACTIVE, 4, 0);
	put_claims(f->st, c, 4);

	n = get_by_number(f->st, k, &arr);
	assert_int_equal(n, 4);
	for (i = 0; i < 4; i++) {
		assert_int_not_equal(find_user(arr, n, c[i].user_id), -1);
		assert_claim_equal(&arr[find_user(arr, n, c[i].user_id)],
		    &c[i]);
	}
	free(arr);
	for (i = 0; i < 4; i++) {
		assert_int_equal(get_by_user(f->st, c[i].user_id, &arr), 1);
		assert_claim_equal(&arr[0], &c[i]);
		free(arr);
	}
	assert_int_equal(strlen(big), USER_ID_MAX);
}

/* A 128-byte enrolment id, extreme times and every field round trip. */
static void
test_enrol_id_round_trip(void **state)
{
	struct fixture	*f = *state;
	struct claim	 c[2], *arr;
	unsigned char	 k[NUMKEY_LEN];

	st_open(f);
	numkey(k, 80);
	mkclaim(&c[0], k, "u", CLAIM_PENDING, INT64_C(4102444800),
	    INT64_C(4102445400));
	memset(c[0].enrol_id, 'e', ENROL_ID_MAX);
	c[0].enrol_id[0] = '|';
	c[0].source = CLAIM_SRC_IMPORT;
	snprintf(c[0].last4, sizeof c[0].last4, "0012");
	/* The last 4 digits are the number's: a claim without them gets them. */
	mkclaim(&c[1], k, "v", CLAIM_ACTIVE, 0, 0);
	c[1].last4[0] = '\0';
	c[1].source = CLAIM_SRC_ADMIN;
	put_claims(f->st, c, 2);
	st_reopen(f);

	assert_int_equal(get_by_number(f->st, k, &arr), 2);
	assert_int_equal(strlen(arr[0].enrol_id), ENROL_ID_MAX);
	assert_claim_equal(&arr[0], &c[0]);
	snprintf(c[1].last4, sizeof c[1].last4, "0012");
	assert_claim_equal(&arr[1], &c[1]);
	free(arr);
}

/* Invalid claims are refused and change nothing. */
static void
test_invalid_claim(void **state)
{
	struct fixture		*f = *state;
	struct store_txn	*txn;
	struct claim		 c, *arr;
	unsigned char		 k[NUMKEY_LEN];

	st_open(f);
	numkey(k, 85);
	assert_int_equal(store_txn_begin(f->st, &txn), STORE_OK);
	mkclaim(&c, k, "", CLAIM_ACTIVE, 1, 0);
	assert_int_equal(store_claim_put(txn, &c), STORE_ERROR);
	mkclaim(&c, k, "u", 7, 1, 0);
	assert_int_equal(store_claim_put(txn, &c), STORE_ERROR);
	mkclaim(&c, k, "u", CLAIM_ACTIVE, 1, 0);
	memset(c.enrol_id, 'e', sizeof c.enrol_id);
	assert_int_equal(store_claim_put(txn, &c), STORE_ERROR);
	/* 'since' is kept in 48 bits of milliseconds. */
	mkclaim(&c, k, "u", CLAIM_ACTIVE, -1, 0);
	assert_int_equal(store_claim_put(txn, &c), STORE_ERROR);
	mkclaim(&c, k, "u", CLAIM_ACTIVE, INT64_C(281474976710656), 0);
	assert_int_equal(store_claim_put(txn, &c), STORE_ERROR);
	assert_int_equal(store_txn_commit(txn), STORE_OK);
	assert_int_equal(get_by_number(f->st, k, &arr), 0);
}

/* Conflicts round trip with their holders. */
static void
test_conflicts(void **state)
{
	struct fixture		*f = *state;
	struct store_txn	*txn;
	struct conflict		 cf[2], *arr;
	char			 big[USER_ID_MAX + 1];
	char			*holders[3];
	struct store_counts	 counts;
	size_t			 n, i;

	st_open(f);
	memset(big, 'h', USER_ID_MAX);
	big[USER_ID_MAX] = '\0';
	holders[0] = "auth0|one";
	holders[1] = big;
	holders[2] = "x|y|z";
	memset(cf, 0, sizeof cf);
	numkey(cf[0].numkey, 90);
	snprintf(cf[0].user_id, sizeof cf[0].user_id, "auth0|late");
	snprintf(cf[0].last4, sizeof cf[0].last4, "1234");
	cf[0].since = 1700000000;
	memset(cf[0].log_id, 'L', LOG_ID_MAX);
	cf[0].holders = holders;
	cf[0].nholders = 3;
	numkey(cf[1].numkey, 91);
	snprintf(cf[1].user_id, sizeof cf[1].user_id, "auth0|other");

	assert_int_equal(store_txn_begin(f->st, &txn), STORE_OK);
	assert_int_equal(store_conflicts(txn, &arr, &n), STORE_OK);
	assert_int_equal(n, 0);
	assert_null(arr);
	assert_int_equal(store_conflict_put(txn, &cf[0]), STORE_OK);
	cf[1].since = 4;
	assert_int_equal(store_conflict_put(txn, &cf[1]), STORE_OK);
	cf[1].since = 5;	/* same number and user: replaces */
	assert_int_equal(store_conflict_put(txn, &cf[1]), STORE_OK);
	assert_int_equal(store_txn_commit(txn), STORE_OK);
	st_reopen(f);

	assert_int_equal(store_txn_begin(f->st, &txn), STORE_OK);
	assert_int_equal(store_conflicts(txn, &arr, &n), STORE_OK);
	assert_int_equal(store_txn_commit(txn), STORE_OK);
	assert_int_equal(n, 2);
	i = memcmp(arr[0].numkey, cf[0].numkey, NUMKEY_LEN) == 0 ? 0 : 1;
	assert_conflict_equal(&arr[i], &cf[0]);
	assert_conflict_equal(&arr[1 - i], &cf[1]);
	assert_int_equal(strlen(arr[i].log_id), LOG_ID_MAX);
	assert_string_equal(arr[i].holders[1], big);
	assert_null(arr[1 - i].holders);
	store_conflicts_free(arr, n);

	assert_int_equal(store_count(f->st, &counts), STORE_OK);
	assert_true(counts.conflicts == 2);
	assert_true(counts.claims == 0);
}

/*
 * A conflict's removal part round trips, and a format 1 record (schema 2,
 * no removal part) written by an earlier release still reads.
 */
static void
test_conflict_removal(void **state)
{
	struct fixture		*f = *state;
	struct store_txn	*txn;
	struct conflict		 cf, got, *arr;
	unsigned char		 rec[64], kbuf[NUMKEY_LEN + 16];
	DB_ENV			*env;
	DB_TXN			*tid;
	DB			*db;
	DBT			 key, data;
	size_t			 n;

	st_open(f);
	memset(&cf, 0, sizeof cf);
	numkey(cf.numkey, 95);
	snprintf(cf.user_id, sizeof cf.user_id, "auth0|late");
	snprintf(cf.last4, sizeof cf.last4, "4321");
	cf.since = 1700000000;
	snprintf(cf.log_id, sizeof cf.log_id, "9001");
	cf.removal = CONFLICT_RM_PENDING;
	memset(cf.method, 'm', ENROL_ID_MAX);
	assert_int_equal(store_txn_begin(f->st, &txn), STORE_OK);
	assert_int_equal(store_conflict_put(txn, &cf), STORE_OK);
	assert_int_equal(store_txn_commit(txn), STORE_OK);
	st_reopen(f);

	assert_int_equal(store_txn_begin(f->st, &txn), STORE_OK);
	assert_int_equal(store_conflict_get(txn, cf.numkey, cf.user_id, &got),
	    STORE_OK);
	assert_conflict_equal(&got, &cf);
	assert_int_equal(got.removal, CONFLICT_RM_PENDING);
	assert_string_equal(got.method, cf.method);
	got.removal = CONFLICT_RM_FAILED;
	got.removal_at = 1700000100;
	got.removal_code = 403;
	assert_int_equal(store_conflict_put(txn, &got), STORE_OK);
	store_conflict_clear(&got);
	assert_int_equal(store_conflict_get(txn, cf.numkey, "auth0|none",
	    &got), STORE_NOTFOUND);
	/* Out of range: refused, nothing written. */
	cf.removal_code = 70000;
	assert_int_equal(store_conflict_put(txn, &cf), STORE_ERROR);
	assert_int_equal(store_txn_commit(txn), STORE_OK);
	st_reopen(f);
	assert_int_equal(store_txn_begin(f->st, &txn), STORE_OK);
	assert_int_equal(store_conflict_get(txn, cf.numkey, cf.user_id, &got),
	    STORE_OK);
	assert_int_equal(got.removal, CONFLICT_RM_FAILED);
	assert_true(got.removal_at == 1700000100);
	assert_int_equal(got.removal_code, 403);
	store_txn_abort(txn);
	store_close(f->st);
	f->st = NULL;

	/* A record as schema 2 wrote it, through BDB itself. */
	memcpy(kbuf, cf.numkey, NUMKEY_LEN);
	memcpy(kbuf + NUMKEY_LEN, "auth0|old", 9);
	memset(rec, 0, sizeof rec);
	rec[0] = 1;			/* format 1 */
	rec[8] = 7;			/* since 7 */
	memcpy(rec + 9, "0042", 4);
	rec[14] = 2;			/* log id "ab" */
	memcpy(rec + 15, "ab", 2);
	rec[18] = 1;			/* one holder, "h" */
	rec[20] = 1;
	rec[21] = 'h';
	assert_int_equal(db_env_create(&env, 0), 0);
	assert_int_equal(env->open(env, f->dir, DB_CREATE | DB_INIT_TXN |
	    DB_INIT_LOCK | DB_INIT_LOG | DB_INIT_MPOOL | DB_RECOVER, 0600), 0);
	assert_int_equal(db_create(&db, env, 0), 0);
	assert_int_equal(env->txn_begin(env, NULL, &tid, 0), 0);
	assert_int_equal(db->open(db, tid, "conflicts.db", NULL, DB_BTREE, 0,
	    0600), 0);
	memset(&key, 0, sizeof key);
	memset(&data, 0, sizeof data);
	key.data = kbuf;
	key.size = NUMKEY_LEN + 9;
	data.data = rec;
	data.size = 22;
	assert_int_equal(db->put(db, tid, &key, &data, 0), 0);
	assert_int_equal(tid->commit(tid, 0), 0);
	assert_int_equal(db->close(db, 0), 0);
	assert_int_equal(env->close(env, 0), 0);
	st_open(f);
	assert_int_equal(store_txn_begin(f->st, &txn), STORE_OK);
	assert_int_equal(store_conflict_get(txn, cf.numkey, "auth0|old", &got),
	    STORE_OK);
	assert_true(got.since == 7);
	assert_string_equal(got.last4, "0042");
	assert_string_equal(got.log_id, "ab");
	assert_int_equal(got.nholders, 1);
	assert_string_equal(got.holders[0], "h");
	assert_int_equal(got.removal, CONFLICT_RM_NONE);
	assert_string_equal(got.method, "");
	store_conflict_clear(&got);
	assert_int_equal(store_conflicts(txn, &arr, &n), STORE_OK);
	assert_int_equal(n, 2);
	store_conflicts_free(arr, n);
	store_txn_abort(txn);
}

/* Return the number of verifications the store counts. */
static uint64_t
verify_waiting(struct store *st)
{
	struct store_counts	c;

	assert_int_equal(store_count(st, &c), STORE_OK);
	return (c.verify);
}

/*
 * Verification requests: one per user with the reasons or-ed and the
 * first time kept, read in user id order, bounded, counted across a
 * reopen, and forgotten.
 */
static void
test_verify_queue(void **state)
{
	struct fixture		*f = *state;
	struct store_txn	*txn;
	char			 user[USER_ID_MAX + 1];
	int			 reasons;
	int64_t			 queued;

	st_open(f);
	assert_int_equal(store_txn_begin(f->st, &txn), STORE_OK);
	assert_int_equal(store_verify_first(txn, user, &reasons, &queued),
	    STORE_NOTFOUND);
	assert_int_equal(store_verify_add(txn, "auth0|b", VERIFY_EXPIRING, 10,
	    2), STORE_OK);
	assert_int_equal(store_verify_add(txn, "auth0|a", VERIFY_UNMATCHED,
	    20, 2), STORE_OK);
	/* The bound counts this transaction's own requests. */
	assert_int_equal(store_verify_add(txn, "auth0|c", VERIFY_UNMATCHED,
	    30, 2), STORE_FULL);
	/* More reasons for a waiting user are not a new request. */
	assert_int_equal(store_verify_add(txn, "auth0|b", VERIFY_AMBIGUOUS,
	    40, 2), STORE_OK);
	assert_int_equal(store_verify_add(txn, "", VERIFY_AMBIGUOUS, 40, 2),
	    STORE_ERROR);
	assert_int_equal(store_verify_add(txn, "auth0|d", 0, 40, 2),
	    STORE_ERROR);
	assert_true(verify_waiting(f->st) == 0);
	assert_int_equal(store_txn_commit(txn), STORE_OK);
	assert_true(verify_waiting(f->st) == 2);
	st_reopen(f);
	assert_true(verify_waiting(f->st) == 2);

	assert_int_equal(store_txn_begin(f->st, &txn), STORE_OK);
	assert_int_equal(store_verify_first(txn, user, &reasons, &queued),
	    STORE_OK);
	assert_string_equal(user, "auth0|a");
	assert_int_equal(reasons, VERIFY_UNMATCHED);
	assert_true(queued == 20);
	assert_int_equal(store_verify_del(txn, "auth0|a"), STORE_OK);
	assert_int_equal(store_verify_del(txn, "auth0|a"), STORE_OK);
	assert_int_equal(store_verify_first(txn, user, &reasons, &queued),
	    STORE_OK);
	assert_string_equal(user, "auth0|b");
	assert_int_equal(reasons, VERIFY_EXPIRING | VERIFY_AMBIGUOUS);
	assert_true(queued == 10);
	store_txn_abort(txn);
	assert_true(verify_waiting(f->st) == 2);

	assert_int_equal(store_txn_begin(f->st, &txn), STORE_OK);
	assert_int_equal(store_verify_del(txn, "auth0|a"), STORE_OK);
	assert_int_equal(store_verify_del(txn, "auth0|b"), STORE_OK);
	assert_int_equal(store_txn_commit(txn), STORE_OK);
	assert_true(verify_waiting(f->st) == 0);
	assert_int_equal(store_txn_begin(f->st, &txn), STORE_OK);
	assert_int_equal(store_verify_first(txn, user, &reasons, &queued),
	    STORE_NOTFOUND);
	store_txn_abort(txn);
}

/* Reservations that lapse in a window (after, until]. */
static void
test_expired_window(void **state)
{
	struct fixture		*f = *state;
	struct store_txn	*txn;
	struct claim		 c[4], *arr;
	unsigned char		 k[NUMKEY_LEN];
	size_t			 n;
	int			 i;

	st_open(f);
	for (i = 0; i < 4; i++) {
		numkey(k, 700 + i);
		mkclaim(&c[i], k, "auth0|w", CLAIM_PENDING, 1, 100 + i * 10);
	}
	put_claims(f->st, c, 4);
	assert_int_equal(store_txn_begin(f->st, &txn), STORE_OK);
	assert_int_equal(store_claims_expired(txn, 110, 130, 10, &arr, &n),
	    STORE_OK);
	assert_int_equal(n, 2);
	assert_true(arr[0].expires == 120 && arr[1].expires == 130);
	free(arr);
	assert_int_equal(store_claims_expired(txn, 109, 200, 1, &arr, &n),
	    STORE_OK);
	assert_int_equal(n, 1);
	assert_true(arr[0].expires == 110);
	free(arr);
	assert_int_equal(store_claims_expired(txn, 130, 200, 10, &arr, &n),
	    STORE_OK);
	assert_int_equal(n, 0);
	store_txn_abort(txn);
}

/* Write a metadata value with BDB itself, the store being closed. */
static void
raw_meta_put(struct fixture *f, const char *name, const char *value)
{
	DB_ENV	*env;
	DB_TXN	*tid;
	DB	*db;
	DBT	 key, data;

	assert_int_equal(db_env_create(&env, 0), 0);
	assert_int_equal(env->open(env, f->dir, DB_CREATE | DB_INIT_TXN |
	    DB_INIT_LOCK | DB_INIT_LOG | DB_INIT_MPOOL | DB_RECOVER, 0600), 0);
	assert_int_equal(db_create(&db, env, 0), 0);
	assert_int_equal(env->txn_begin(env, NULL, &tid, 0), 0);
	assert_int_equal(db->open(db, tid, "meta.db", NULL, DB_BTREE, 0, 0600),
	    0);
	memset(&key, 0, sizeof key);
	memset(&data, 0, sizeof data);
	key.data = (void *)(uintptr_t)name;
	key.size = strlen(name);
	data.data = (void *)(uintptr_t)value;
	data.size = strlen(value);
	assert_int_equal(db->put(db, tid, &key, &data, 0), 0);
	assert_int_equal(tid->commit(tid, 0), 0);
	assert_int_equal(db->close(db, 0), 0);
	assert_int_equal(env->close(env, 0), 0);
}

/*
 * A clean close leaves the counts for the next open, which takes them
 * without counting and deletes them at once; after a crash they are gone
 * and the open counts again.
 */
static void
test_counts_saved(void **state)
{
	struct fixture		*f = *state;
	struct store_txn	*txn;
	struct claim		 c[4];
	unsigned char		 k[NUMKEY_LEN];
	char			*v;
	pid_t			 pid;
	int			 i, status;

	st_open(f);
	for (i = 0; i < 4; i++) {
		numkey(k, 800 + i);
		mkclaim(&c[i], k, "auth0|s", i == 0 ? CLAIM_PENDING :
		    CLAIM_ACTIVE, 10, i == 0 ? 99 : 0);
	}
	put_claims(f->st, c, 3);
	assert_counts(f->st, 3, 2, 1, 0);
	store_close(f->st);
	f->st = NULL;

	/* Taken as saved: a doctored record shows it is not a recount. */
	raw_meta_put(f, "counts", "7 1 2 0");
	st_open(f);
	assert_counts(f->st, 7, 6, 1, 2);
	assert_int_equal(store_txn_begin(f->st, &txn), STORE_OK);
	assert_int_equal(store_meta_get(txn, "counts", &v), STORE_NOTFOUND);
	store_txn_abort(txn);
	store_close(f->st);
	f->st = NULL;

	/* Unreadable or impossible saved counts: counted. */
	raw_meta_put(f, "counts", "1 2 0 0");
	st_open(f);
	assert_counts(f->st, 3, 2, 1, 0);
	store_close(f->st);
	f->st = NULL;

	/* A crash after the open: nothing saved, the next open counts. */
	pid = fork();
	assert_true(pid != -1);
	if (pid == 0) {
		char	*cause = NULL;

		if ((f->st = store_open(f->dir, &cause)) == NULL)
			_exit(1);
		put_claims(f->st, &c[3], 1);
		_exit(0);
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	st_open(f);
	assert_counts(f->st, 4, 3, 1, 0);
}

/* Metadata: get and put, and the schema version written on creation. */
static void
test_meta(void **state)
{
	struct fixture		*f = *state;
	struct store_txn	*txn;
	char			*v, want[16];

	st_open(f);
	assert_int_equal(store_txn_begin(f->st, &txn), STORE_OK);
	assert_int_equal(store_meta_get(txn, "schema_version", &v), STORE_OK);
	snprintf(want, sizeof want, "%d", STORE_SCHEMA_VERSION);
	assert_string_equal(v, want);
	free(v);
	assert_int_equal(store_meta_get(txn, "nothing", &v), STORE_NOTFOUND);
	assert_null(v);
	assert_int_equal(store_meta_put(txn, "last_log_id", "9001"), STORE_OK);
	assert_int_equal(store_meta_put(txn, "empty", ""), STORE_OK);
	assert_int_equal(store_txn_commit(txn), STORE_OK);
	st_reopen(f);

	assert_int_equal(store_txn_begin(f->st, &txn), STORE_OK);
	assert_int_equal(store_meta_get(txn, "last_log_id", &v), STORE_OK);
	assert_string_equal(v, "9001");
	free(v);
	assert_int_equal(store_meta_get(txn, "empty", &v), STORE_OK);
	assert_string_equal(v, "");
	free(v);
	assert_int_equal(store_meta_put(txn, "last_log_id", "9002"), STORE_OK);
	assert_int_equal(store_meta_get(txn, "last_log_id", &v), STORE_OK);
	assert_string_equal(v, "9002");
	free(v);
	assert_int_equal(store_txn_commit(txn), STORE_OK);
}

/* A schema version newer than ours refuses to open, with a clear cause. */
static void
test_schema_newer_refused(void **state)
{
	struct fixture		*f = *state;
	struct store_txn	*txn;
	char			*cause = NULL, v[16], want[64];

	st_open(f);
	snprintf(v, sizeof v, "%d", STORE_SCHEMA_VERSION + 1);
	snprintf(want, sizeof want, "schema version %d is newer",
	    STORE_SCHEMA_VERSION + 1);
	assert_int_equal(store_txn_begin(f->st, &txn), STORE_OK);
	assert_int_equal(store_meta_put(txn, "schema_version", v), STORE_OK);
	assert_int_equal(store_txn_commit(txn), STORE_OK);
	store_close(f->st);
	f->st = NULL;

	assert_null(store_open(f->dir, &cause));
	assert_non_null(cause);
	print_message("cause: %s\n", cause);
	assert_non_null(strstr(cause, f->dir));
	assert_non_null(strstr(cause, want));
	free(cause);
}

/* An unreadable schema version also refuses to open. */
static void
test_schema_garbage_refused(void **state)
{
	struct fixture		*f = *state;
	struct store_txn	*txn;
	char			*cause = NULL;

	st_open(f);
	assert_int_equal(store_txn_begin(f->st, &txn), STORE_OK);
	assert_int_equal(store_meta_put(txn, "schema_version", "1x"),
	    STORE_OK);
	assert_int_equal(store_txn_commit(txn), STORE_OK);
	store_close(f->st);
	f->st = NULL;
	assert_null(store_open(f->dir, &cause));
	assert_non_null(strstr(cause, "unreadable schema_version"));
	free(cause);
}

/* Opening where no directory can be: NULL and a cause naming the path. */
static void
test_open_failure(void **state)
{
	struct fixture	*f = *state;
	char		*cause = NULL, path[192];
	FILE		*fp;

	snprintf(path, sizeof path, "%s/file", f->tmp);
	assert_non_null(fp = fopen(path, "w"));
	fclose(fp);
	assert_null(store_open(path, &cause));
	assert_non_null(strstr(cause, path));
	assert_non_null(strstr(cause, "not a directory"));
	free(cause);
	snprintf(path, sizeof path, "%s/missing/state", f->tmp);
	assert_null(store_open(path, &cause));
	assert_non_null(strstr(cause, "cannot create"));
	free(cause);
}

/* A second open of a state directory in use is refused, not recovered. */
static void
test_second_open_refused(void **state)
{
	struct fixture	*f = *state;
	char		*cause = NULL;

	st_open(f);
	assert_null(store_open(f->dir, &cause));
	assert_non_null(cause);
	assert_non_null(strstr(cause, "in use by another process"));
	free(cause);
	store_close(f->st);
	f->st = NULL;
	st_open(f);
}

/* An aborted transaction leaves nothing, in no database or index. */
static void
test_abort_discards(void **state)
{
	struct fixture		*f = *state;
	struct store_txn	*txn;
	struct claim		 c, *arr;
	struct conflict		 cf, *cfs;
	unsigned char		 k[NUMKEY_LEN];
	char			*v;
	size_t			 n;

	st_open(f);
	numkey(k, 100);
	mkclaim(&c, k, "ghost", CLAIM_PENDING, 1, 10);
	memset(&cf, 0, sizeof cf);
	memcpy(cf.numkey, k, NUMKEY_LEN);
	snprintf(cf.user_id, sizeof cf.user_id, "ghost2");
	assert_int_equal(store_txn_begin(f->st, &txn), STORE_OK);
	assert_int_equal(store_claim_put(txn, &c), STORE_OK);
	assert_int_equal(store_conflict_put(txn, &cf), STORE_OK);
	assert_int_equal(store_meta_put(txn, "ghost", "1"), STORE_OK);
	assert_int_equal(store_claims_by_number(txn, k, &arr, &n), STORE_OK);
	assert_int_equal(n, 1);
	free(arr);
	store_txn_abort(txn);

	assert_int_equal(get_by_number(f->st, k, &arr), 0);
	assert_int_equal(get_by_user(f->st, "ghost", &arr), 0);
	assert_int_equal(get_expired(f->st, 100, 10, &arr), 0);
	assert_int_equal(store_txn_begin(f->st, &txn), STORE_OK);
	assert_int_equal(store_meta_get(txn, "ghost", &v), STORE_NOTFOUND);
	assert_int_equal(store_conflicts(txn, &cfs, &n), STORE_OK);
	assert_int_equal(n, 0);
	store_txn_abort(txn);
}

/* Committed and flushed data is there after close and recovery. */
static void
test_recovery_after_close(void **state)
{
	struct fixture		*f = *state;
	struct claim		 c[40], *arr;
	struct store_counts	 counts;
	unsigned char		 k[NUMKEY_LEN];
	char			 user[32];
	int			 i;

	st_open(f);
	for (i = 0; i < 40; i++) {
		numkey(k, 200 + i);
		snprintf(user, sizeof user, "auth0|%d", i);
		mkclaim(&c[i], k, user, i % 2 ? CLAIM_ACTIVE : CLAIM_PENDING,
		    i, i % 2 ? 0 : 1000 + i);
	}
	put_claims(f->st, c, 20);
	assert_int_equal(store_checkpoint(f->st), STORE_OK);
	put_claims(f->st, c + 20, 20);
	assert_int_equal(store_checkpoint(f->st), STORE_OK);
	assert_int_equal(store_checkpoint(f->st), STORE_OK);
	st_reopen(f);
	st_reopen(f);

	for (i = 0; i < 40; i++) {
		assert_int_equal(get_by_number(f->st, c[i].numkey, &arr), 1);
		assert_claim_equal(&arr[0], &c[i]);
		free(arr);
	}
	assert_int_equal(store_count(f->st, &counts), STORE_OK);
	assert_true(counts.claims == 40);
	assert_true(counts.conflicts == 0);
	assert_int_equal(get_expired(f->st, 5000, 100, &arr), 20);
	free(arr);
}

/*
 * The child of the crash test: commit without a flush, commit with one,
 * leave a transaction open, and die without closing anything.
 */
static int
crash_child(const char *dir)
{
	static struct store	*st;	/* static: reachable at _exit */
	static struct store_txn	*txn;
	struct claim		 c;
	unsigned char		 k[NUMKEY_LEN];
	char			*cause;
	int			 i;

	if ((st = store_open(dir, &cause)) == NULL)
		return (1);
	if (store_txn_begin(st, &txn) != STORE_OK)
		return (2);
	for (i = 0; i < 10; i++) {
		numkey(k, 300 + i);
		mkclaim(&c, k, "crash|early", CLAIM_PENDING, i, 100 + i);
		if (store_claim_put(txn, &c) != STORE_OK)
			return (3);
	}
	if (store_txn_commit(txn) != STORE_OK)
		return (4);
	if (store_txn_begin(st, &txn) != STORE_OK)
		return (5);
	numkey(k, 400);
	mkclaim(&c, k, "crash|flushed", CLAIM_ACTIVE, 7, 0);
	if (store_claim_put(txn, &c) != STORE_OK ||
	    store_meta_put(txn, "crash", "yes") != STORE_OK ||
	    store_txn_commit(txn) != STORE_OK || store_flush(st) != STORE_OK)
		return (6);
	if (store_txn_begin(st, &txn) != STORE_OK)
		return (7);
	numkey(k, 500);
	mkclaim(&c, k, "crash|uncommitted", CLAIM_ACTIVE, 8, 0);
	if (store_claim_put(txn, &c) != STORE_OK)
		return (8);
	return (0);
}

/* A process that dies after store_flush loses nothing it committed. */
static void
test_crash_recovery(void **state)
{
	struct fixture		*f = *state;
	struct store_txn	*txn;
	struct claim		*arr;
	unsigned char		 k[NUMKEY_LEN];
	char			*v;
	pid_t			 pid;
	int			 status;

	fflush(NULL);
	if ((pid = fork()) == -1)
		fail_msg("fork: %s", strerror(errno));
	if (pid == 0)
		_exit(crash_child(f->dir));
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 0);

	st_open(f);
	numkey(k, 400);
	assert_int_equal(get_by_number(f->st, k, &arr), 1);
	assert_string_equal(arr[0].user_id, "crash|flushed");
	free(arr);
	/* WRITE_NOSYNC commits survive a process crash, flushed or not. */
	assert_int_equal(get_by_user(f->st, "crash|early", &arr), 10);
	free(arr);
	assert_int_equal(get_expired(f->st, 200, 100, &arr), 10);
	free(arr);
	assert_int_equal(get_by_user(f->st, "crash|uncommitted", &arr), 0);
	assert_int_equal(store_txn_begin(f->st, &txn), STORE_OK);
	assert_int_equal(store_meta_get(txn, "crash", &v), STORE_OK);
	assert_string_equal(v, "yes");
	free(v);
	assert_int_equal(store_txn_commit(txn), STORE_OK);
}

/*
 * The child of the deadlock test, on its own handle of the parent's
 * environment: write-lock claims.db, then wait for the parent's lock on
 * meta.db.  Its high priority makes the parent the deadlock victim.
 */
static int
deadlock_child(const char *dir, int go, int ready)
{
	DB_ENV		*env;
	DB		*claims, *meta;
	DB_TXN		*tid;
	DBT		 key, data;
	unsigned char	 kbuf[NUMKEY_LEN];
	char		 b;

	if (read(go, &b, 1) != 1 || db_env_create(&env, 0) != 0 ||
	    env->open(env, dir, 0, 0) != 0 || db_create(&claims, env, 0) != 0 ||
	    claims->open(claims, NULL, "numbers.db", NULL, DB_BTREE,
	    DB_AUTO_COMMIT, 0) != 0 || db_create(&meta, env, 0) != 0 ||
	    meta->open(meta, NULL, "meta.db", NULL, DB_BTREE, DB_AUTO_COMMIT,
	    0) != 0 || env->txn_begin(env, NULL, &tid, 0) != 0 ||
	    tid->set_priority(tid, UINT32_MAX) != 0)
		return (1);
	numkey(kbuf, 600);
	memset(&key, 0, sizeof key);
	memset(&data, 0, sizeof data);
	key.data = kbuf;
	key.size = sizeof kbuf;
	if (claims->get(claims, tid, &key, &data, DB_RMW) != 0)
		return (2);
	if (write(ready, "r", 1) != 1)
		return (3);
	key.data = "schema_version";
	key.size = strlen(key.data);
	if (meta->get(meta, tid, &key, &data, DB_RMW) != 0)
		return (4);
	if (tid->commit(tid, 0) != 0 || meta->close(meta, 0) != 0 ||
	    claims->close(claims, 0) != 0 || env->close(env, 0) != 0)
		return (5);
	return (0);
}

/* A deadlock victim gets STORE_RETRY, and the retried transaction works. */
static void
test_deadlock_retry(void **state)
{
	struct fixture		*f = *state;
	struct store_txn	*txn;
	struct claim		 c, *arr;
	unsigned char		 k[NUMKEY_LEN];
	int			 go[2], ready[2], status;
	size_t			 n;
	pid_t			 pid;
	char			 b;

	assert_int_equal(pipe(go), 0);
	assert_int_equal(pipe(ready), 0);
	fflush(NULL);
	if ((pid = fork()) == -1)
		fail_msg("fork: %s", strerror(errno));
	if (pid == 0) {
		alarm(30);
		_exit(deadlock_child(f->dir, go[0], ready[1]));
	}
	alarm(30);
	st_open(f);
	numkey(k, 600);
	mkclaim(&c, k, "victim", CLAIM_ACTIVE, 1, 0);
	put_claims(f->st, &c, 1);

	assert_int_equal(store_txn_begin(f->st, &txn), STORE_OK);
	assert_int_equal(store_meta_put(txn, "lock", "held"), STORE_OK);
	assert_int_equal(write(go[1], "g", 1), 1);
	assert_int_equal(read(ready[0], &b, 1), 1);
	assert_int_equal(store_claims_by_number(txn, k, &arr, &n),
	    STORE_RETRY);
	assert_int_equal(n, 0);
	assert_null(arr);
	store_txn_abort(txn);
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 0);
	alarm(0);

	assert_int_equal(get_by_number(f->st, k, &arr), 1);
	free(arr);
	assert_false(store_failed(f->st));
	close(go[0]);
	close(go[1]);
	close(ready[0]);
	close(ready[1]);
}

/* Count calls of the fail callback. */
static void
count_cb(void *arg)
{
	(*(int *)arg)++;
}

/* Drop the messages of the test's own environment handle. */
static void
quiet_cb(const DB_ENV *env, const char *prefix, const char *msg)
{
	(void)env;
	(void)prefix;
	(void)msg;
}

/* Panic the environment from a second handle, as a fatal error would. */
static int
panic_env(const char *dir)
{
	DB_ENV	*env;

	if (db_env_create(&env, 0) != 0)
		return (-1);
	env->set_errcall(env, quiet_cb);
	if (env->open(env, dir, 0, 0) != 0 ||
	    env->set_flags(env, DB_PANIC_ENVIRONMENT, 1) != 0)
		return (-1);
	env->close(env, 0);
	return (0);
}

/*
 * The child of the panic test: panic the environment under an open store,
 * check that every call fails and the callback runs once, then close.  It
 * returns the number of the first check that failed, 0 if none.  Berkeley
 * DB frees no handle after a panic (the docs say: exit), so the parent kills
 * the child afterwards, as the daemon would exit, rather than leave it to a
 * leak check.
 */
static int
panic_child(const char *dir)
{
	struct store		*st;
	struct store_txn	*txn;
	struct store_counts	 counts;
	struct claim		 c, *arr;
	unsigned char		 k[NUMKEY_LEN];
	size_t			 n;
	char			*cause;
	int			 calls = 0;

	if ((st = store_open(dir, &cause)) == NULL)
		return (1);
	store_set_fail_cb(st, count_cb, &calls);
	numkey(k, 700);
	mkclaim(&c, k, "survivor", CLAIM_ACTIVE, 1, 0);
	if (store_txn_begin(st, &txn) != STORE_OK ||
	    store_claim_put(txn, &c) != STORE_OK ||
	    store_txn_commit(txn) != STORE_OK || store_flush(st) != STORE_OK)
		return (2);
	if (store_txn_begin(st, &txn) != STORE_OK || store_failed(st))
		return (3);
	if (panic_env(dir) != 0)
		return (4);
	if (store_claims_by_number(txn, k, &arr, &n) != STORE_ERROR ||
	    arr != NULL || n != 0)
		return (5);
	if (!store_failed(st) || calls != 1)
		return (6);
	if (store_claim_put(txn, &c) != STORE_ERROR ||
	    store_txn_commit(txn) != STORE_ERROR)
		return (7);
	if (store_txn_begin(st, &txn) != STORE_ERROR || txn != NULL)
		return (8);
	if (store_flush(st) != STORE_ERROR ||
	    store_checkpoint(st) != STORE_ERROR ||
	    store_count(st, &counts) != STORE_ERROR)
		return (9);
	if (calls != 1)
		return (10);
	store_close(st);
	return (0);
}

/* After a panic every call fails, the callback runs once, restart heals. */
static void
test_panic(void **state)
{
	struct fixture	*f = *state;
	struct claim	*arr;
	unsigned char	 k[NUMKEY_LEN], result = 0xff;
	int		 p[2], status;
	pid_t		 pid;

	assert_int_equal(pipe(p), 0);
	fflush(NULL);
	if ((pid = fork()) == -1)
		fail_msg("fork: %s", strerror(errno));
	if (pid == 0) {
		alarm(30);
		result = (unsigned char)panic_child(f->dir);
		if (write(p[1], &result, 1) != 1)
			_exit(1);
		for (;;)
			pause();
	}
	close(p[1]);
	assert_int_equal(read(p[0], &result, 1), 1);
	close(p[0]);
	kill(pid, SIGKILL);
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFSIGNALED(status));
	assert_int_equal(result, 0);

	st_open(f);
	assert_false(store_failed(f->st));
	numkey(k, 700);
	assert_int_equal(get_by_number(f->st, k, &arr), 1);
	assert_string_equal(arr[0].user_id, "survivor");
	free(arr);
}

/* Deleting a claim leaves no trace in any index, whatever its state. */
static void
test_delete_active(void **state)
{
	struct fixture		*f = *state;
	struct store_txn	*txn;
	struct claim		 c[4], *arr;
	unsigned char		 k[NUMKEY_LEN];
	int			 i;

	st_open(f);
	numkey(k, 25);
	mkclaim(&c[0], k, "active", CLAIM_ACTIVE, 1, 0);
	mkclaim(&c[1], k, "pending", CLAIM_PENDING, 1, 100);
	mkclaim(&c[2], k, "active-e", CLAIM_ACTIVE, 1, 0);
	mkclaim(&c[3], k, "pending-e", CLAIM_PENDING, 1, 100);
	snprintf(c[2].enrol_id, sizeof c[2].enrol_id, "sms|dev_1");
	snprintf(c[3].enrol_id, sizeof c[3].enrol_id, "sms|dev_2");
	put_claims(f->st, c, 4);

	assert_int_equal(store_txn_begin(f->st, &txn), STORE_OK);
	for (i = 0; i < 4; i++)
		assert_int_equal(store_claim_del(txn, k, c[i].user_id),
		    STORE_OK);
	assert_int_equal(store_txn_commit(txn), STORE_OK);
	assert_int_equal(get_by_number(f->st, k, &arr), 0);
	for (i = 0; i < 4; i++)
		assert_int_equal(get_by_user(f->st, c[i].user_id, &arr), 0);
	assert_int_equal(get_expired(f->st, 1000, 10, &arr), 0);
	assert_int_equal(get_by_enrol(f->st, "sms|dev_1", &arr), 0);
	assert_int_equal(get_by_enrol(f->st, "sms|dev_2", &arr), 0);
	store_close(f->st);
	f->st = NULL;
	assert_int_equal(raw_count(f->dir, "numbers_user.db"), 0);
	assert_int_equal(raw_count(f->dir, "numbers_expiry.db"), 0);
	assert_int_equal(raw_count(f->dir, "numbers_enrol.db"), 0);
}

/* Add a seen log id in a transaction of its own; return the result. */
static int
seen_add(struct store *st, const char *log_id, int64_t now)
{
	struct store_txn	*txn;
	int			 r;

	assert_int_equal(store_txn_begin(st, &txn), STORE_OK);
	r = store_seen_add(txn, log_id, now);
	assert_int_equal(store_txn_commit(txn), STORE_OK);
	return (r);
}

/* Return 1 if a log id is known, without changing anything. */
static int
seen_known(struct store *st, const char *log_id)
{
	struct store_txn	*txn;
	int			 r;

	assert_int_equal(store_txn_begin(st, &txn), STORE_OK);
	r = store_seen_add(txn, log_id, 0);
	store_txn_abort(txn);
	assert_true(r == STORE_OK || r == STORE_EXISTS);
	return (r == STORE_EXISTS);
}

/* Prune seen log ids in a transaction of its own; return how many. */
static size_t
seen_prune(struct store *st, int64_t before, size_t max)
{
	struct store_txn	*txn;
	size_t			 n = 12345;

	assert_int_equal(store_txn_begin(st, &txn), STORE_OK);
	assert_int_equal(store_seen_prune(txn, before, max, &n), STORE_OK);
	assert_int_equal(store_txn_commit(txn), STORE_OK);
	return (n);
}

/* Seen log ids: added once, a duplicate changes nothing, bad ids refused. */
static void
test_seen_add(void **state)
{
	struct fixture		*f = *state;
	struct store_txn	*txn;
	char			 id[LOG_ID_MAX + 2];

	st_open(f);
	snprintf(id, sizeof id, "%s",
	    "90020240101000000000000000000000000000000000000000000001");
	assert_int_equal(strlen(id), 56);
	assert_false(seen_known(f->st, id));
	assert_int_equal(seen_add(f->st, id, 100), STORE_OK);
	assert_true(seen_known(f->st, id));
	/* A duplicate keeps the first time: pruning before 150 drops it. */
	assert_int_equal(seen_add(f->st, id, 200), STORE_EXISTS);
	assert_int_equal(seen_prune(f->st, 150, 10), 1);
	assert_false(seen_known(f->st, id));

	/* Within one transaction, and an abort forgets. */
	assert_int_equal(store_txn_begin(f->st, &txn), STORE_OK);
	assert_int_equal(store_seen_add(txn, "x1", 5), STORE_OK);
	assert_int_equal(store_seen_add(txn, "x1", 5), STORE_EXISTS);
	assert_int_equal(store_seen_add(txn, "x10", 5), STORE_OK);
	store_txn_abort(txn);
	assert_false(seen_known(f->st, "x1"));
	assert_int_equal(seen_add(f->st, "x1", 5), STORE_OK);
	assert_false(seen_known(f->st, "x"));
	assert_false(seen_known(f->st, "x10"));

	memset(id, '7', LOG_ID_MAX);
	id[LOG_ID_MAX] = '\0';
	assert_int_equal(seen_add(f->st, id, 1), STORE_OK);
	assert_int_equal(seen_add(f->st, id, 1), STORE_EXISTS);
	id[LOG_ID_MAX] = '7';
	id[LOG_ID_MAX + 1] = '\0';
	assert_int_equal(seen_add(f->st, id, 1), STORE_ERROR);
	assert_int_equal(seen_add(f->st, "", 1), STORE_ERROR);
	assert_int_equal(seen_add(f->st, "neg", -1), STORE_ERROR);
	assert_false(seen_known(f->st, "neg"));
	assert_false(store_failed(f->st));
	id[LOG_ID_MAX] = '\0';
	assert_int_equal(seen_add(f->st, id, 2), STORE_EXISTS);
	store_close(f->st);
	f->st = NULL;
	/* "x1" and the 128-byte id, each once in the index too. */
	assert_int_equal(raw_count(f->dir, "seen.db"), 2);
	assert_int_equal(raw_count(f->dir, "seen_date.db"), 2);
}

/* Pruning: strictly before the time, oldest first, at most max. */
static void
test_seen_prune(void **state)
{
	struct fixture	*f = *state;
	static const int64_t t[] = { 50, 10, 30, 20, 40, 30, 0 };
	char		 id[32];
	size_t		 i;

	st_open(f);
	for (i = 0; i < 7; i++) {
		snprintf(id, sizeof id, "id%zu", i);
		assert_int_equal(seen_add(f->st, id, t[i]), STORE_OK);
	}
	assert_int_equal(seen_prune(f->st, 0, 10), 0);
	assert_int_equal(seen_prune(f->st, 35, 0), 0);
	assert_true(seen_known(f->st, "id6"));

	/* Two at most: the ones seen at 0 and 10. */
	assert_int_equal(seen_prune(f->st, 35, 2), 2);
	assert_false(seen_known(f->st, "id6"));
	assert_false(seen_known(f->st, "id1"));
	assert_true(seen_known(f->st, "id3"));
	/* Then 20 only: 30 is not before 30. */
	assert_int_equal(seen_prune(f->st, 30, 10), 1);
	assert_false(seen_known(f->st, "id3"));
	assert_true(seen_known(f->st, "id2"));
	assert_true(seen_known(f->st, "id5"));
	/* The two seen at 30 together, then nothing more before 35. */
	assert_int_equal(seen_prune(f->st, 35, 10), 2);
	assert_false(seen_known(f->st, "id2"));
	assert_false(seen_known(f->st, "id5"));
	assert_int_equal(seen_prune(f->st, 35, 10), 0);
	assert_true(seen_known(f->st, "id4"));
	assert_true(seen_known(f->st, "id0"));
	st_reopen(f);
	assert_true(seen_known(f->st, "id0"));
	assert_int_equal(seen_prune(f->st, INT64_MAX, 10), 2);
	assert_int_equal(seen_prune(f->st, INT64_MAX, 10), 0);
	store_close(f->st);
	f->st = NULL;
	assert_int_equal(raw_count(f->dir, "seen.db"), 0);
	assert_int_equal(raw_count(f->dir, "seen_date.db"), 0);
}

/*
 * seen_date.db, kept by hand since schema 5's second release, holds what
 * Berkeley DB's association kept: one (time, log id) per seen.db record,
 * nothing else, after adds, redeliveries, an aborted transaction and
 * prunes; a release that associates the index reads the same files.
 */
static void
test_seen_index_agrees(void **state)
{
	struct fixture		*f = *state;
	struct store_txn	*txn;
	DB_ENV			*env, *ienv;
	DB			*db, *idx;
	DBC			*dbc;
	DBT			 key, data, ikey, idata;
	char			 id[32];
	size_t			 i, n = 0;

	st_open(f);
	for (i = 0; i < 60; i++) {
		snprintf(id, sizeof id, "9002026%03zu", (i * 37) % 60);
		assert_int_equal(seen_add(f->st, id, (int64_t)(i % 7)),
		    STORE_OK);
	}
	assert_int_equal(seen_add(f->st, "9002026000", 9), STORE_EXISTS);
	assert_int_equal(store_txn_begin(f->st, &txn), STORE_OK);
	assert_int_equal(store_seen_add(txn, "aborted", 3), STORE_OK);
	store_txn_abort(txn);
	assert_int_equal(seen_prune(f->st, 2, 5), 5);
	store_close(f->st);
	f->st = NULL;

	assert_int_equal(raw_count(f->dir, "seen.db"), 55);
	assert_int_equal(raw_count(f->dir, "seen_date.db"), 55);
	assert_int_equal(raw_open(f->dir, "seen.db", &env, &db), 0);
	assert_int_equal(raw_open(f->dir, "seen_date.db", &ienv, &idx), 0);
	assert_int_equal(idx->cursor(idx, NULL, &dbc, 0), 0);
	memset(&ikey, 0, sizeof ikey);
	memset(&idata, 0, sizeof idata);
	while (dbc->get(dbc, &ikey, &idata, DB_NEXT) == 0) {
		memset(&data, 0, sizeof data);
		key = idata;
		assert_int_equal(db->get(db, NULL, &key, &data, 0), 0);
		assert_int_equal(ikey.size, data.size);
		assert_memory_equal(ikey.data, data.data, data.size);
		n++;
	}
	assert_int_equal(n, 55);
	dbc->close(dbc);
	idx->close(idx, 0);
	ienv->close(ienv, 0);
	db->close(db, 0);
	env->close(env, 0);
}

/* Read a watermark in a transaction of its own. */
static int
wm_get(struct store *st, const char *user, const unsigned char *k,
    int64_t *date)
{
	struct store_txn	*txn;
	int			 r;

	assert_int_equal(store_txn_begin(st, &txn), STORE_OK);
	r = store_watermark_get(txn, user, k, date);
	assert_int_equal(store_txn_commit(txn), STORE_OK);
	assert_true(r == STORE_OK || r == STORE_NOTFOUND);
	if (r == STORE_NOTFOUND)
		assert_true(*date == 0);
	return (r);
}

/* Raise a watermark in a transaction of its own. */
static void
wm_raise(struct store *st, const char *user, const unsigned char *k,
    int64_t date)
{
	struct store_txn	*txn;

	assert_int_equal(store_txn_begin(st, &txn), STORE_OK);
	assert_int_equal(store_watermark_raise(txn, user, k, date), STORE_OK);
	assert_int_equal(store_txn_commit(txn), STORE_OK);
}

/* Watermarks only go up; user-wide and per-number ones are independent. */
static void
test_watermarks(void **state)
{
	struct fixture	*f = *state;
	unsigned char	 k1[NUMKEY_LEN], k2[NUMKEY_LEN];
	int64_t		 d = -1;

	st_open(f);
	numkey(k1, 110);
	numkey(k2, 111);
	assert_int_equal(wm_get(f->st, "auth0|u", NULL, &d), STORE_NOTFOUND);
	wm_raise(f->st, "auth0|u", NULL, INT64_C(1700000000123));
	assert_int_equal(wm_get(f->st, "auth0|u", NULL, &d), STORE_OK);
	assert_true(d == INT64_C(1700000000123));
	wm_raise(f->st, "auth0|u", NULL, INT64_C(1600000000000));
	assert_int_equal(wm_get(f->st, "auth0|u", NULL, &d), STORE_OK);
	assert_true(d == INT64_C(1700000000123));
	wm_raise(f->st, "auth0|u", NULL, INT64_C(1700000000124));
	assert_int_equal(wm_get(f->st, "auth0|u", NULL, &d), STORE_OK);
	assert_true(d == INT64_C(1700000000124));

	assert_int_equal(wm_get(f->st, "auth0|u", k1, &d), STORE_NOTFOUND);
	wm_raise(f->st, "auth0|u", k1, 5);
	wm_raise(f->st, "auth0|u", k1, 3);
	assert_int_equal(wm_get(f->st, "auth0|u", k1, &d), STORE_OK);
	assert_true(d == 5);
	assert_int_equal(wm_get(f->st, "auth0|u", k2, &d), STORE_NOTFOUND);
	assert_int_equal(wm_get(f->st, "auth0|u", NULL, &d), STORE_OK);
	assert_true(d == INT64_C(1700000000124));
	assert_int_equal(wm_get(f->st, "auth0|v", NULL, &d), STORE_NOTFOUND);
	assert_int_equal(wm_get(f->st, "auth0|v", k1, &d), STORE_NOTFOUND);
	st_reopen(f);
	assert_int_equal(wm_get(f->st, "auth0|u", k1, &d), STORE_OK);
	assert_true(d == 5);
	assert_int_equal(wm_get(f->st, "auth0|u", NULL, &d), STORE_OK);
	assert_true(d == INT64_C(1700000000124));
}

/* Extreme dates round trip; invalid user ids are refused. */
static void
test_watermark_limits(void **state)
{
	struct fixture		*f = *state;
	struct store_txn	*txn;
	unsigned char		 k1[NUMKEY_LEN], k2[NUMKEY_LEN];
	char			 big[USER_ID_MAX + 2];
	int64_t			 d = -1;

	st_open(f);
	numkey(k1, 112);
	numkey(k2, 113);
	/* The same transaction sees its own raise. */
	assert_int_equal(store_txn_begin(f->st, &txn), STORE_OK);
	assert_int_equal(store_watermark_raise(txn, "min", NULL, INT64_MIN),
	    STORE_OK);
	assert_int_equal(store_watermark_raise(txn, "max", k2, INT64_MAX),
	    STORE_OK);
	assert_int_equal(store_watermark_get(txn, "max", k2, &d), STORE_OK);
	assert_true(d == INT64_MAX);
	assert_int_equal(store_txn_commit(txn), STORE_OK);
	st_reopen(f);
	assert_int_equal(wm_get(f->st, "min", NULL, &d), STORE_OK);
	assert_true(d == INT64_MIN);
	assert_int_equal(wm_get(f->st, "max", k2, &d), STORE_OK);
	assert_true(d == INT64_MAX);
	assert_int_equal(wm_get(f->st, "max", NULL, &d), STORE_NOTFOUND);

	/* Invalid user ids: nothing to read, nothing written. */
	memset(big, 'u', sizeof big - 1);
	big[sizeof big - 1] = '\0';
	assert_int_equal(store_txn_begin(f->st, &txn), STORE_OK);
	assert_int_equal(store_watermark_raise(txn, "", NULL, 1), STORE_ERROR);
	assert_int_equal(store_watermark_raise(txn, big, k1, 1), STORE_ERROR);
	assert_int_equal(store_watermark_get(txn, "", NULL, &d),
	    STORE_NOTFOUND);
	assert_int_equal(store_watermark_get(txn, big, NULL, &d),
	    STORE_NOTFOUND);
	big[USER_ID_MAX] = '\0';
	assert_int_equal(store_watermark_raise(txn, big, k1, 9), STORE_OK);
	assert_int_equal(store_watermark_get(txn, big, k1, &d), STORE_OK);
	assert_true(d == 9);
	assert_int_equal(store_txn_commit(txn), STORE_OK);
}

/*
 * Without the NUL separator, user "a" with number key K and the user "a" K
 * (K's bytes in the user id) would share a key.  Check both ways, and the
 * bytes on disk.
 */
static void
test_watermark_keys(void **state)
{
	struct fixture	*f = *state;
	unsigned char	 k[NUMKEY_LEN], key[1 + 1 + NUMKEY_LEN], rec[16];
	char		 joined[1 + NUMKEY_LEN + 1];
	size_t		 i, len;
	int64_t		 d;

	st_open(f);
	for (i = 0; i < NUMKEY_LEN; i++)
		k[i] = (unsigned char)(0x41 + i);
	joined[0] = 'a';
	memcpy(joined + 1, k, NUMKEY_LEN);
	joined[1 + NUMKEY_LEN] = '\0';

	wm_raise(f->st, "a", k, 111);
	assert_int_equal(wm_get(f->st, joined, NULL, &d), STORE_NOTFOUND);
	assert_int_equal(wm_get(f->st, "a", NULL, &d), STORE_NOTFOUND);
	wm_raise(f->st, joined, NULL, 222);
	wm_raise(f->st, "a", NULL, 333);
	assert_int_equal(wm_get(f->st, "a", k, &d), STORE_OK);
	assert_true(d == 111);
	assert_int_equal(wm_get(f->st, joined, NULL, &d), STORE_OK);
	assert_true(d == 222);
	assert_int_equal(wm_get(f->st, "a", NULL, &d), STORE_OK);
	assert_true(d == 333);
	assert_int_equal(wm_get(f->st, joined, k, &d), STORE_NOTFOUND);
	store_close(f->st);
	f->st = NULL;

	/* On disk: "a" NUL K -> 111 as 8 big-endian bytes. */
	assert_int_equal(raw_count(f->dir, "watermarks.db"), 3);
	key[0] = 'a';
	key[1] = '\0';
	memcpy(key + 2, k, NUMKEY_LEN);
	assert_int_equal(raw_get(f->dir, "watermarks.db", key, sizeof key,
	    rec, &len), 0);
	assert_int_equal(len, 8);
	assert_memory_equal(rec, "\0\0\0\0\0\0\0\x6f", 8);
	assert_int_equal(raw_get(f->dir, "watermarks.db", joined,
	    strlen(joined), rec, &len), 0);
	assert_memory_equal(rec, "\0\0\0\0\0\0\0\xde", 8);
}

/* Read the claims with an enrolment id in a transaction of its own. */
static size_t
get_by_enrol(struct store *st, const char *enrol, struct claim **arr)
{
	struct store_txn	*txn;
	size_t			 n;

	assert_int_equal(store_txn_begin(st, &txn), STORE_OK);
	assert_int_equal(store_claims_by_enrol(txn, enrol, arr, &n),
	    STORE_OK);
	assert_int_equal(store_txn_commit(txn), STORE_OK);
	if (n == 0)
		assert_null(*arr);
	return (n);
}

/* By enrolment id: every claim with it; no entry for an empty one. */
static void
test_by_enrol(void **state)
{
	struct fixture	*f = *state;
	struct claim	 c[5], *arr;
	unsigned char	 k[4][NUMKEY_LEN];
	char		 big[ENROL_ID_MAX + 2];
	size_t		 n;
	int		 i;

	st_open(f);
	for (i = 0; i < 4; i++)
		numkey(k[i], 120 + i);
	mkclaim(&c[0], k[0], "u1", CLAIM_ACTIVE, 1, 0);
	mkclaim(&c[1], k[1], "u2", CLAIM_PENDING, 2, 60);
	mkclaim(&c[2], k[2], "u1", CLAIM_ACTIVE, 3, 0);
	mkclaim(&c[3], k[3], "u3", CLAIM_ACTIVE, 4, 0);
	mkclaim(&c[4], k[3], "u4", CLAIM_ACTIVE, 5, 0);
	snprintf(c[0].enrol_id, sizeof c[0].enrol_id, "phone|dev_A");
	snprintf(c[1].enrol_id, sizeof c[1].enrol_id, "phone|dev_A");
	snprintf(c[2].enrol_id, sizeof c[2].enrol_id, "phone|dev_B");
	memset(c[4].enrol_id, 'E', ENROL_ID_MAX);
	put_claims(f->st, c, 5);

	n = get_by_enrol(f->st, "phone|dev_A", &arr);
	assert_int_equal(n, 2);
	assert_claim_equal(&arr[find_user(arr, n, "u1")], &c[0]);
	assert_claim_equal(&arr[find_user(arr, n, "u2")], &c[1]);
	free(arr);
	assert_int_equal(get_by_enrol(f->st, "phone|dev_B", &arr), 1);
	assert_claim_equal(&arr[0], &c[2]);
	free(arr);
	assert_int_equal(get_by_enrol(f->st, c[4].enrol_id, &arr), 1);
	assert_claim_equal(&arr[0], &c[4]);
	free(arr);
	assert_int_equal(get_by_enrol(f->st, "", &arr), 0);
	assert_int_equal(get_by_enrol(f->st, "phone|dev_", &arr), 0);
	assert_int_equal(get_by_enrol(f->st, "phone|dev_AB", &arr), 0);
	memset(big, 'E', sizeof big - 1);
	big[sizeof big - 1] = '\0';
	assert_int_equal(get_by_enrol(f->st, big, &arr), 0);
	store_close(f->st);
	f->st = NULL;
	/* One record per number; one index key per number and id. */
	assert_int_equal(raw_count(f->dir, "numbers.db"), 4);
	assert_int_equal(raw_count(f->dir, "numbers_enrol.db"), 4);
}

/* Changing a claim's enrolment id moves it in the index; delete drops it. */
static void
test_by_enrol_moves(void **state)
{
	struct fixture		*f = *state;
	struct store_txn	*txn;
	struct claim		 c[3], *arr;
	unsigned char		 k[3][NUMKEY_LEN];
	size_t			 n;
	int			 i;

	st_open(f);
	for (i = 0; i < 3; i++)
		numkey(k[i], 125 + i);
	mkclaim(&c[0], k[0], "u1", CLAIM_ACTIVE, 1, 0);
	mkclaim(&c[1], k[1], "u2", CLAIM_PENDING, 2, 60);
	mkclaim(&c[2], k[2], "u1", CLAIM_ACTIVE, 3, 0);
	snprintf(c[0].enrol_id, sizeof c[0].enrol_id, "phone|dev_A");
	snprintf(c[1].enrol_id, sizeof c[1].enrol_id, "phone|dev_A");
	snprintf(c[2].enrol_id, sizeof c[2].enrol_id, "phone|dev_B");
	put_claims(f->st, c, 3);

	/* B joins A, and the first A loses its id. */
	snprintf(c[2].enrol_id, sizeof c[2].enrol_id, "phone|dev_A");
	c[0].enrol_id[0] = '\0';
	put_claims(f->st, &c[0], 3);
	assert_int_equal(get_by_enrol(f->st, "phone|dev_B", &arr), 0);
	n = get_by_enrol(f->st, "phone|dev_A", &arr);
	assert_int_equal(n, 2);
	i = find_user(arr, n, "u1");
	assert_int_not_equal(i, -1);
	assert_claim_equal(&arr[i], &c[2]);
	assert_claim_equal(&arr[find_user(arr, n, "u2")], &c[1]);
	free(arr);

	assert_int_equal(store_txn_begin(f->st, &txn), STORE_OK);
	assert_int_equal(store_claim_del(txn, k[1], "u2"), STORE_OK);
	assert_int_equal(store_txn_commit(txn), STORE_OK);
	st_reopen(f);
	assert_int_equal(get_by_enrol(f->st, "phone|dev_A", &arr), 1);
	assert_claim_equal(&arr[0], &c[2]);
	free(arr);
	store_close(f->st);
	f->st = NULL;
	/* Of the 2 claims left, only u1 on k[2] has an enrolment id. */
	assert_int_equal(raw_count(f->dir, "numbers.db"), 2);
	assert_int_equal(raw_count(f->dir, "numbers_enrol.db"), 1);
}

/* Fill the i-th claim of the big transaction: distinct, scattered keys. */
static void
big_claim(struct claim *c, int i)
{
	unsigned char	k[NUMKEY_LEN];
	uint32_t	x = (uint32_t)i * UINT32_C(2654435761);
	char		user[32];
	int		j;

	for (j = 0; j < NUMKEY_LEN; j++)
		k[j] = (unsigned char)(j < 4 ? x >> (24 - 8 * j) :
		    (uint32_t)(i + j * 7));
	snprintf(user, sizeof user, "auth0|%024d", i);
	mkclaim(c, k, user, CLAIM_PENDING, 1000, 2000 + i % 500);
	snprintf(c->enrol_id, sizeof c->enrol_id, "phone|dev_%d", i);
}

/*
 * One log-stream request is one transaction: 30,000 claims (four btrees
 * each) and 30,000 seen ids (two) must fit the lock table and commit.
 */
static void
test_big_txn(void **state)
{
	struct fixture		*f = *state;
	struct store_txn	*txn;
	struct store_counts	 counts;
	struct claim		 c, *arr;
	char			 id[64];
	double			 t0, t1, t2;
	int			 i;

	st_open(f);
	t0 = now_s();
	assert_int_equal(store_txn_begin(f->st, &txn), STORE_OK);
	for (i = 0; i < BIG_N; i++) {
		big_claim(&c, i);
		assert_int_equal(store_claim_put(txn, &c), STORE_OK);
		snprintf(id, sizeof id, "900202%050d", i);
		assert_int_equal(store_seen_add(txn, id, 1000 + i % 100),
		    STORE_OK);
	}
	assert_int_equal(store_txn_commit(txn), STORE_OK);
	assert_int_equal(store_flush(f->st), STORE_OK);
	t1 = now_s();

	assert_int_equal(store_count(f->st, &counts), STORE_OK);
	assert_true(counts.claims == BIG_N);
	for (i = 0; i < BIG_N; i += 997) {
		big_claim(&c, i);
		assert_int_equal(get_by_number(f->st, c.numkey, &arr), 1);
		assert_claim_equal(&arr[0], &c);
		free(arr);
		assert_int_equal(get_by_enrol(f->st, c.enrol_id, &arr), 1);
		free(arr);
		snprintf(id, sizeof id, "900202%050d", i);
		assert_true(seen_known(f->st, id));
	}
	assert_int_equal(get_expired(f->st, 2000, BIG_N, &arr), BIG_N / 500);
	free(arr);
	t2 = now_s();
	assert_int_equal(seen_prune(f->st, INT64_MAX, BIG_N), BIG_N);
	print_message("big transaction: %d claims + %d seen ids in %.2f s; "
	    "pruning them all in one transaction: %.2f s\n", BIG_N, BIG_N,
	    t1 - t0, now_s() - t2);
}

/* Seen ids, watermarks and the enrolment index survive close and reopen. */
static void
test_reopen_new_data(void **state)
{
	struct fixture	*f = *state;
	struct claim	 c[2], *arr;
	unsigned char	 k[NUMKEY_LEN];
	int64_t		 d;

	st_open(f);
	numkey(k, 130);
	mkclaim(&c[0], k, "u1", CLAIM_ACTIVE, 1, 0);
	mkclaim(&c[1], k, "u2", CLAIM_PENDING, 2, 60);
	snprintf(c[0].enrol_id, sizeof c[0].enrol_id, "voice|dev_9");
	snprintf(c[1].enrol_id, sizeof c[1].enrol_id, "voice|dev_9");
	put_claims(f->st, c, 2);
	assert_int_equal(seen_add(f->st, "old", 10), STORE_OK);
	assert_int_equal(seen_add(f->st, "new", 20), STORE_OK);
	wm_raise(f->st, "u1", NULL, 1000);
	wm_raise(f->st, "u1", k, 2000);
	assert_int_equal(store_checkpoint(f->st), STORE_OK);
	st_reopen(f);

	assert_int_equal(get_by_enrol(f->st, "voice|dev_9", &arr), 2);
	assert_claim_equal(&arr[find_user(arr, 2, "u1")], &c[0]);
	assert_claim_equal(&arr[find_user(arr, 2, "u2")], &c[1]);
	free(arr);
	assert_int_equal(seen_add(f->st, "old", 30), STORE_EXISTS);
	assert_int_equal(wm_get(f->st, "u1", NULL, &d), STORE_OK);
	assert_true(d == 1000);
	assert_int_equal(wm_get(f->st, "u1", k, &d), STORE_OK);
	assert_true(d == 2000);
	assert_int_equal(seen_prune(f->st, 15, 10), 1);
	assert_false(seen_known(f->st, "old"));
	assert_true(seen_known(f->st, "new"));
}

/*
 * A state directory that lacks an index (numbers_enrol.db, seen_date.db)
 * gets it built at open from its primary, with not a word from Berkeley
 * DB.
 */
static void
test_missing_indexes_built(void **state)
{
	struct fixture	*f = *state;
	struct claim	 c[3], *arr;
	unsigned char	 k[NUMKEY_LEN];
	char		 path[192], *cause = NULL, *err;
	int		 saved;

	st_open(f);
	numkey(k, 140);
	mkclaim(&c[0], k, "u1", CLAIM_ACTIVE, 1, 0);
	mkclaim(&c[1], k, "u2", CLAIM_PENDING, 2, 60);
	mkclaim(&c[2], k, "u3", CLAIM_ACTIVE, 3, 0);
	snprintf(c[0].enrol_id, sizeof c[0].enrol_id, "sms|dev_1");
	snprintf(c[1].enrol_id, sizeof c[1].enrol_id, "sms|dev_1");
	put_claims(f->st, c, 3);
	assert_int_equal(seen_add(f->st, "b", 20), STORE_OK);
	assert_int_equal(seen_add(f->st, "a", 30), STORE_OK);
	assert_int_equal(seen_add(f->st, "c", 10), STORE_OK);
	store_close(f->st);
	f->st = NULL;
	snprintf(path, sizeof path, "%s/numbers_enrol.db", f->dir);
	assert_int_equal(unlink(path), 0);
	snprintf(path, sizeof path, "%s/seen_date.db", f->dir);
	assert_int_equal(unlink(path), 0);

	capture_begin(f, &saved);
	f->st = store_open(f->dir, &cause);
	err = capture_end(f, saved);
	assert_non_null(f->st);
	assert_string_equal(err, "");
	free(err);

	assert_int_equal(get_by_enrol(f->st, "sms|dev_1", &arr), 2);
	assert_claim_equal(&arr[find_user(arr, 2, "u1")], &c[0]);
	assert_claim_equal(&arr[find_user(arr, 2, "u2")], &c[1]);
	free(arr);
	assert_int_equal(seen_prune(f->st, 25, 1), 1);
	assert_false(seen_known(f->st, "c"));
	assert_true(seen_known(f->st, "b"));
	assert_int_equal(seen_prune(f->st, 25, 10), 1);
	assert_false(seen_known(f->st, "b"));
	assert_true(seen_known(f->st, "a"));
	st_reopen(f);
	store_close(f->st);
	f->st = NULL;
	/* Two claims of one number with one enrolment id: one key. */
	assert_int_equal(raw_count(f->dir, "numbers_enrol.db"), 1);
	assert_int_equal(raw_count(f->dir, "seen_date.db"), 1);
}

/* A store of an older schema version is raised to ours when opened. */
static void
test_schema_raised(void **state)
{
	struct fixture		*f = *state;
	struct store_txn	*txn;
	char			*v, want[16];

	st_open(f);
	assert_int_equal(store_txn_begin(f->st, &txn), STORE_OK);
	assert_int_equal(store_meta_put(txn, "schema_version", "1"), STORE_OK);
	assert_int_equal(store_txn_commit(txn), STORE_OK);
	st_reopen(f);
	snprintf(want, sizeof want, "%d", STORE_SCHEMA_VERSION);
	assert_int_equal(store_txn_begin(f->st, &txn), STORE_OK);
	assert_int_equal(store_meta_get(txn, "schema_version", &v), STORE_OK);
	assert_string_equal(v, want);
	free(v);
	store_txn_abort(txn);
}

/* Assert the store's counts. */
static void
assert_counts(struct store *st, uint64_t claims, uint64_t active,
    uint64_t pending, uint64_t conflicts)
{
	struct store_counts	c;

	assert_int_equal(store_count(st, &c), STORE_OK);
	assert_int_equal(c.claims, claims);
	assert_int_equal(c.active, active);
	assert_int_equal(c.pending, pending);
	assert_int_equal(c.conflicts, conflicts);
}

/*
 * The migration from schema 3: claims.db (numkey[32] user -> record format
 * 1) written here with BDB itself, as the release before wrote it.
 */
#define MIG_NUMBERS	12000	/* over the 10,000 claims of a batch */
#define MIG_RESUMED	5	/* numbers copied before the "crash" */

/* The number key of the i-th number of the migration test. */
static void
mig_numkey(unsigned char *k, size_t i)
{
	memset(k, 0x5a, NUMKEY_LEN);
	k[0] = (unsigned char)(i >> 8);
	k[1] = (unsigned char)i;
}

/* The j-th claim (0 or 1) on the i-th number; every 10th has two. */
static void
mig_claim(struct claim *c, size_t i, int j)
{
	unsigned char	k[NUMKEY_LEN];
	char		user[32];

	mig_numkey(k, i);
	snprintf(user, sizeof user, "auth0|m%zu%s", i, j ? "b" : "a");
	mkclaim(c, k, user, i % 7 == 0 ? CLAIM_PENDING : CLAIM_ACTIVE,
	    (1000 + (int64_t)i) * 1000, i % 7 == 0 ? 5000 + (int64_t)i : 0);
	if (i % 3 == 0)
		snprintf(c->enrol_id, sizeof c->enrol_id, "phone|dev_%zu%d",
		    i, j);
}

/* Write a big-endian 64-bit integer. */
static void
put_be64(unsigned char *p, int64_t v)
{
	int	i;

	for (i = 7; i >= 0; i--, v = (int64_t)((uint64_t)v >> 8))
		p[i] = (unsigned char)v;
}

/* Write claims.db of schema 3 and set the schema version, store closed. */
static void
mig_write_old(struct fixture *f)
{
	DB_ENV		*env;
	DB_TXN		*tid;
	DB		*db;
	DBT		 key, data;
	struct claim	 c;
	unsigned char	 kbuf[32 + 32], rec[25 + ENROL_ID_MAX];
	size_t		 i, ulen, elen;
	int		 j;

	assert_int_equal(db_env_create(&env, 0), 0);
	assert_int_equal(env->set_lk_max_locks(env, 100000), 0);
	assert_int_equal(env->set_lk_max_objects(env, 100000), 0);
	assert_int_equal(env->open(env, f->dir, DB_CREATE | DB_INIT_TXN |
	    DB_INIT_LOCK | DB_INIT_LOG | DB_INIT_MPOOL | DB_RECOVER, 0600), 0);
	assert_int_equal(db_create(&db, env, 0), 0);
	assert_int_equal(env->txn_begin(env, NULL, &tid, 0), 0);
	assert_int_equal(db->open(db, tid, "claims.db", NULL, DB_BTREE,
	    DB_CREATE, 0600), 0);
	for (i = 0; i < MIG_NUMBERS; i++) {
		for (j = 0; j < (i % 10 == 0 ? 2 : 1); j++) {
			mig_claim(&c, i, j);
			ulen = strlen(c.user_id);
			elen = strlen(c.enrol_id);
			/* The old 32-byte key: the new 16 bytes, then more. */
			memcpy(kbuf, c.numkey, NUMKEY_LEN);
			memset(kbuf + NUMKEY_LEN, 0xee, 32 - NUMKEY_LEN);
			memcpy(kbuf + 32, c.user_id, ulen);
			memset(rec, 0, sizeof rec);
			rec[0] = 1;
			rec[1] = (unsigned char)c.state;
			rec[2] = (unsigned char)c.source;
			put_be64(rec + 3, c.since_ms / 1000);
			put_be64(rec + 11, c.expires);
			memcpy(rec + 19, c.last4, strlen(c.last4));
			rec[23] = (unsigned char)(elen >> 8);
			rec[24] = (unsigned char)elen;
			memcpy(rec + 25, c.enrol_id, elen);
			memset(&key, 0, sizeof key);
			memset(&data, 0, sizeof data);
			key.data = kbuf;
			key.size = (u_int32_t)(32 + ulen);
			data.data = rec;
			data.size = (u_int32_t)(25 + elen);
			assert_int_equal(db->put(db, tid, &key, &data, 0), 0);
		}
	}
	assert_int_equal(tid->commit(tid, 0), 0);
	assert_int_equal(db->close(db, 0), 0);
	assert_int_equal(env->close(env, 0), 0);
	raw_meta_put(f, "schema_version", "3");
}

/*
 * A store of schema 3 is migrated at open: every claim, with its indexes
 * and counts; the old files go.  The migration resumes after a crash: the
 * first numbers were copied already (with a mark the old file has not),
 * and the open copies only the rest.
 */
static void
test_migrate_schema3(void **state)
{
	struct fixture	*f = *state;
	struct claim	 c, want[MIG_RESUMED], *arr;
	char		 path[192], user[32];
	struct stat	 sb;
	size_t		 i, n, claims = 0, pending = 0;
	int		 j;

	st_open(f);
	for (i = 0; i < MIG_RESUMED; i++) {
		mig_claim(&want[i], i, 0);
		want[i].since_ms = 7000;
	}
	put_claims(f->st, want, MIG_RESUMED);
	store_close(f->st);
	f->st = NULL;
	mig_write_old(f);
	for (i = 0; i < MIG_NUMBERS; i++)
		for (j = 0; j < (i % 10 == 0 ? 2 : 1); j++) {
			claims++;
			pending += i % 7 == 0;
		}
	/* The resumed numbers keep what the "first run" wrote. */
	for (i = 0; i < MIG_RESUMED; i++) {
		claims -= i % 10 == 0;
		pending -= i % 10 == 0 && i % 7 == 0;
	}

	st_open(f);
	assert_counts(f->st, claims, claims - pending, pending, 0);
	for (i = 0; i < MIG_NUMBERS; i += 997) {
		n = get_by_number(f->st, (mig_claim(&c, i, 0), c.numkey), &arr);
		assert_int_equal(n, i >= MIG_RESUMED && i % 10 == 0 ? 2 : 1);
		if (i < MIG_RESUMED)
			assert_claim_equal(&arr[0], &want[i]);
		else
			assert_claim_equal(&arr[0], &c);
		free(arr);
		assert_int_equal(get_by_user(f->st, c.user_id, &arr), 1);
		free(arr);
		if (c.enrol_id[0] != '\0') {
			assert_int_equal(get_by_enrol(f->st, c.enrol_id, &arr),
			    1);
			assert_claim_equal(&arr[0], i < MIG_RESUMED ? &want[i] :
			    &c);
			free(arr);
		}
	}
	snprintf(user, sizeof user, "auth0|m%zub", (size_t)10);
	assert_int_equal(get_by_user(f->st, user, &arr), 1);
	free(arr);
	/* Every pending claim is in the expiry index. */
	n = get_expired(f->st, 5000 + MIG_NUMBERS, MIG_NUMBERS, &arr);
	free(arr);
	assert_true(n >= pending);
	st_reopen(f);
	assert_counts(f->st, claims, claims - pending, pending, 0);
	store_close(f->st);
	f->st = NULL;
	snprintf(path, sizeof path, "%s/claims.db", f->dir);
	assert_int_equal(stat(path, &sb), -1);
	assert_int_equal(raw_count(f->dir, "numbers.db"), MIG_NUMBERS);
}

/*
 * kill -9 during the migration: the next open recovers, resumes and ends
 * with every claim, whatever the moment.  The child migrates; the parent
 * kills it after a delay that grows each round, so that rounds land early
 * in the copy, late in it, and (the last) after the migration ended.
 */
static void
test_migrate_killed(void **state)
{
	struct fixture	*f = *state;
	struct claim	 c, *arr;
	static const int delays_ms[] = { 20, 40, 70, 100, 5000 };
	char		*cause = NULL;
	struct store	*st;
	size_t		 i, n, claims, pending, r;
	int		 status, killed = 0;
	pid_t		 pid;

	claims = pending = 0;
	for (i = 0; i < MIG_NUMBERS; i++) {
		claims += i % 10 == 0 ? 2 : 1;
		pending += i % 7 == 0 ? (i % 10 == 0 ? 2 : 1) : 0;
	}
	for (r = 0; r < sizeof delays_ms / sizeof delays_ms[0]; r++) {
		nftw(f->dir, rm_cb, 8, FTW_DEPTH | FTW_PHYS);
		st_open(f);
		store_close(f->st);
		f->st = NULL;
		mig_write_old(f);
		fflush(NULL);
		if ((pid = fork()) == -1)
			fail_msg("fork: %s", strerror(errno));
		if (pid == 0) {
			st = store_open(f->dir, &cause);
			_exit(st == NULL ? 1 : 0);
		}
		usleep((useconds_t)delays_ms[r] * 1000);
		if (kill(pid, SIGKILL) == 0)
			killed++;
		assert_int_equal(waitpid(pid, &status, 0), pid);
		assert_true(WIFSIGNALED(status) ||
		    (WIFEXITED(status) && WEXITSTATUS(status) == 0));
		print_message("round %zu: the migrating child %s after %d ms\n",
		    r, WIFSIGNALED(status) ? "was killed" : "had finished",
		    delays_ms[r]);

		st_open(f);
		assert_counts(f->st, claims, claims - pending, pending, 0);
		for (i = 0; i < MIG_NUMBERS; i += 499) {
			mig_claim(&c, i, 0);
			n = get_by_number(f->st, c.numkey, &arr);
			assert_int_equal(n, i % 10 == 0 ? 2 : 1);
			assert_claim_equal(&arr[0], &c);
			free(arr);
			assert_int_equal(get_by_user(f->st, c.user_id, &arr), 1);
			free(arr);
		}
		store_close(f->st);
		f->st = NULL;
		assert_int_equal(raw_count(f->dir, "numbers.db"), MIG_NUMBERS);
	}
	/* At least the first round must have hit the migration itself. */
	assert_true(killed >= 1);
}

/* Record a conflict of user on the number of a seed. */
static void
put_conflict(struct store_txn *txn, int seed, const char *user)
{
	struct conflict	cf;

	memset(&cf, 0, sizeof cf);
	numkey(cf.numkey, seed);
	snprintf(cf.user_id, sizeof cf.user_id, "%s", user);
	snprintf(cf.last4, sizeof cf.last4, "0000");
	cf.since = 1;
	assert_int_equal(store_conflict_put(txn, &cf), STORE_OK);
}

/*
 * The counts follow every committed put and delete, state changes
 * included, ignore what an aborted transaction did, and are the same
 * when counted again at open.
 */
static void
test_counts(void **state)
{
	struct fixture		*f = *state;
	struct store_txn	*txn;
	struct claim		 c[4];
	unsigned char		 k[NUMKEY_LEN];
	int			 i;

	st_open(f);
	assert_counts(f->st, 0, 0, 0, 0);
	for (i = 0; i < 4; i++) {
		numkey(k, 300 + i);
		mkclaim(&c[i], k, i == 3 ? "auth0|b" : "auth0|a",
		    i == 1 ? CLAIM_ACTIVE : CLAIM_PENDING, 10, i == 1 ? 0 : 99);
	}
	put_claims(f->st, c, 2);
	assert_counts(f->st, 2, 1, 1, 0);

	/* Pending to active, a delete, two new, one written twice. */
	assert_int_equal(store_txn_begin(f->st, &txn), STORE_OK);
	c[0].state = CLAIM_ACTIVE;
	c[0].expires = 0;
	assert_int_equal(store_claim_put(txn, &c[0]), STORE_OK);
	assert_int_equal(store_claim_del(txn, c[1].numkey, c[1].user_id),
	    STORE_OK);
	assert_int_equal(store_claim_del(txn, c[1].numkey, c[1].user_id),
	    STORE_NOTFOUND);
	assert_int_equal(store_claim_put(txn, &c[2]), STORE_OK);
	assert_int_equal(store_claim_put(txn, &c[2]), STORE_OK);
	assert_int_equal(store_claim_put(txn, &c[3]), STORE_OK);
	put_conflict(txn, 300, "auth0|c");
	put_conflict(txn, 300, "auth0|c");	/* replaces: counted once */
	put_conflict(txn, 301, "auth0|c");
	/* Nothing counts before the commit... */
	assert_counts(f->st, 2, 1, 1, 0);
	store_txn_abort(txn);
	/* ...and nothing of an aborted transaction. */
	assert_counts(f->st, 2, 1, 1, 0);

	assert_int_equal(store_txn_begin(f->st, &txn), STORE_OK);
	assert_int_equal(store_claim_put(txn, &c[0]), STORE_OK);
	assert_int_equal(store_claim_del(txn, c[1].numkey, c[1].user_id),
	    STORE_OK);
	assert_int_equal(store_claim_put(txn, &c[2]), STORE_OK);
	assert_int_equal(store_claim_put(txn, &c[2]), STORE_OK);
	assert_int_equal(store_claim_put(txn, &c[3]), STORE_OK);
	put_conflict(txn, 300, "auth0|c");
	put_conflict(txn, 300, "auth0|c");
	put_conflict(txn, 301, "auth0|c");
	assert_int_equal(store_txn_commit(txn), STORE_OK);
	assert_counts(f->st, 3, 1, 2, 2);

	/* Active back to pending; an existing conflict replaced. */
	c[0].state = CLAIM_PENDING;
	c[0].expires = 50;
	put_claims(f->st, c, 1);
	assert_int_equal(store_txn_begin(f->st, &txn), STORE_OK);
	put_conflict(txn, 301, "auth0|c");
	assert_int_equal(store_txn_commit(txn), STORE_OK);
	assert_counts(f->st, 3, 0, 3, 2);

	st_reopen(f);
	assert_counts(f->st, 3, 0, 3, 2);
	assert_int_equal(store_txn_begin(f->st, &txn), STORE_OK);
	for (i = 0; i < 4; i++)
		if (i != 1)
			assert_int_equal(store_claim_del(txn, c[i].numkey,
			    c[i].user_id), STORE_OK);
	assert_int_equal(store_txn_commit(txn), STORE_OK);
	assert_counts(f->st, 0, 0, 0, 2);
	st_reopen(f);
	assert_counts(f->st, 0, 0, 0, 2);
}

/* A walk that remembers the claims it saw and stops after a number. */
struct walk {
	struct claim	 seen[8];
	size_t		 n;
	size_t		 stop;
};

/* Remember one claim of a walk; stop when there are enough. */
static int
walk_cb(const struct claim *c, void *arg)
{
	struct walk	*w = arg;

	assert_true(w->n < 8);
	w->seen[w->n++] = *c;
	return (w->n == w->stop);
}

/* store_claims_all: every claim in key order, resumed after a claim. */
static void
test_claims_all(void **state)
{
	struct fixture		*f = *state;
	struct store_txn	*txn;
	struct claim		 c[5];
	struct walk		 w;
	unsigned char		 k[NUMKEY_LEN];
	size_t			 i;

	st_open(f);
	memset(&w, 0, sizeof w);
	assert_int_equal(store_txn_begin(f->st, &txn), STORE_OK);
	assert_int_equal(store_claims_all(txn, NULL, walk_cb, &w), STORE_OK);
	assert_int_equal(store_txn_commit(txn), STORE_OK);
	assert_int_equal(w.n, 0);

	/* Numbers 0 < 1 in key order; users "a" < "b" < "c" on number 1. */
	memset(k, 0x10, sizeof k);
	mkclaim(&c[0], k, "z", CLAIM_ACTIVE, 1, 0);
	memset(k, 0x20, sizeof k);
	mkclaim(&c[1], k, "a", CLAIM_PENDING, 2, 9);
	mkclaim(&c[2], k, "b", CLAIM_ACTIVE, 3, 0);
	mkclaim(&c[3], k, "bb", CLAIM_ACTIVE, 4, 0);
	mkclaim(&c[4], k, "c", CLAIM_ACTIVE, 5, 0);
	put_claims(f->st, c, 5);

	assert_int_equal(store_txn_begin(f->st, &txn), STORE_OK);
	assert_int_equal(store_claims_all(txn, NULL, walk_cb, &w), STORE_OK);
	assert_int_equal(w.n, 5);
	for (i = 0; i < 5; i++)
		assert_claim_equal(&w.seen[i], &c[i]);

	/* In pieces of two, each resumed after the last one seen. */
	memset(&w, 0, sizeof w);
	w.stop = 2;
	assert_int_equal(store_claims_all(txn, NULL, walk_cb, &w), STORE_OK);
	w.stop = 4;
	assert_int_equal(store_claims_all(txn, &w.seen[1], walk_cb, &w),
	    STORE_OK);
	w.stop = 6;
	assert_int_equal(store_claims_all(txn, &w.seen[3], walk_cb, &w),
	    STORE_OK);
	assert_int_equal(w.n, 5);
	for (i = 0; i < 5; i++)
		assert_claim_equal(&w.seen[i], &c[i]);

	/* Resuming after a claim deleted since still finds the next one. */
	assert_int_equal(store_claim_del(txn, c[2].numkey, c[2].user_id),
	    STORE_OK);
	memset(&w, 0, sizeof w);
	assert_int_equal(store_claims_all(txn, &c[2], walk_cb, &w), STORE_OK);
	assert_int_equal(w.n, 2);
	assert_claim_equal(&w.seen[0], &c[3]);
	assert_claim_equal(&w.seen[1], &c[4]);
	store_txn_abort(txn);
}

/* Open one database of a closed store with a handle of the test's own. */
static int
raw_open(const char *dir, const char *file, DB_ENV **envp, DB **dbp)
{
	DB_ENV	*env;
	DB	*db;

	if (db_env_create(&env, 0) != 0)
		return (-1);
	env->set_errfile(env, stderr);
	if (env->open(env, dir, 0, 0) != 0) {
		env->close(env, 0);
		return (-1);
	}
	if (db_create(&db, env, 0) != 0 ||
	    db->open(db, NULL, file, NULL, DB_UNKNOWN, DB_RDONLY, 0) != 0) {
		db->close(db, 0);
		env->close(env, 0);
		return (-1);
	}
	*envp = env;
	*dbp = db;
	return (0);
}

/* Count the records of one database of a closed store. */
static size_t
raw_count(const char *dir, const char *file)
{
	DB_ENV	*env;
	DB	*db;
	DBC	*dbc;
	DBT	 key, data;
	size_t	 n = 0;

	assert_int_equal(raw_open(dir, file, &env, &db), 0);
	assert_int_equal(db->cursor(db, NULL, &dbc, 0), 0);
	memset(&key, 0, sizeof key);
	memset(&data, 0, sizeof data);
	while (dbc->get(dbc, &key, &data, DB_NEXT) == 0)
		n++;
	dbc->close(dbc);
	db->close(db, 0);
	env->close(env, 0);
	return (n);
}

/* Read one record (up to 16 bytes) of a closed store; 0 if found. */
static int
raw_get(const char *dir, const char *file, const void *k, size_t klen,
    unsigned char *rec, size_t *len)
{
	DB_ENV	*env;
	DB	*db;
	DBT	 key, data;
	int	 ret;

	assert_int_equal(raw_open(dir, file, &env, &db), 0);
	memset(&key, 0, sizeof key);
	memset(&data, 0, sizeof data);
	key.data = (void *)k;
	key.size = klen;
	if ((ret = db->get(db, NULL, &key, &data, 0)) == 0) {
		*len = data.size;
		memcpy(rec, data.data, data.size < 16 ? data.size : 16);
	}
	db->close(db, 0);
	env->close(env, 0);
	return (ret);
}

/* Send stderr to a file of the fixture until capture_end. */
static void
capture_begin(struct fixture *f, int *saved)
{
	char	path[192];
	int	fd;

	snprintf(path, sizeof path, "%s/stderr", f->tmp);
	fflush(stderr);
	assert_int_not_equal(*saved = dup(STDERR_FILENO), -1);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	assert_int_not_equal(fd, -1);
	assert_int_equal(dup2(fd, STDERR_FILENO), STDERR_FILENO);
	close(fd);
}

/* Restore stderr and return what was written meanwhile, to be freed. */
static char *
capture_end(struct fixture *f, int saved)
{
	char	path[192], *buf;
	FILE	*fp;
	long	 n;

	fflush(stderr);
	dup2(saved, STDERR_FILENO);
	close(saved);
	snprintf(path, sizeof path, "%s/stderr", f->tmp);
	assert_non_null(fp = fopen(path, "r"));
	assert_int_equal(fseek(fp, 0, SEEK_END), 0);
	assert_true((n = ftell(fp)) >= 0);
	rewind(fp);
	assert_non_null(buf = calloc(1, n + 1));
	assert_int_equal(fread(buf, 1, n, fp), n);
	fclose(fp);
	remove(path);
	return (buf);
}

/* The time now in seconds, for timings. */
static double
now_s(void)
{
	struct timeval	tv;

	gettimeofday(&tv, NULL);
	return (tv.tv_sec + tv.tv_usec / 1e6);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
		T(test_reopen_keeps_data),
		T(test_by_number),
		T(test_by_user),
		T(test_delete),
		T(test_overwrite_updates_expiry),
		T(test_expired_order_max),
		T(test_user_id_bytes),
		T(test_enrol_id_round_trip),
		T(test_invalid_claim),
		T(test_conflicts),
		T(test_meta),
		T(test_schema_newer_refused),
		T(test_migrate_schema3),
		T(test_migrate_killed),
		T(test_schema_garbage_refused),
		T(test_open_failure),
		T(test_second_open_refused),
		T(test_abort_discards),
		T(test_recovery_after_close),
		T(test_crash_recovery),
		T(test_deadlock_retry),
		T(test_panic),
		T(test_delete_active),
		T(test_seen_add),
		T(test_seen_prune),
		T(test_seen_index_agrees),
		T(test_watermarks),
		T(test_watermark_limits),
		T(test_watermark_keys),
		T(test_by_enrol),
		T(test_by_enrol_moves),
		T(test_big_txn),
		T(test_reopen_new_data),
		T(test_missing_indexes_built),
		T(test_schema_raised),
		T(test_counts),
		T(test_claims_all),
		T(test_conflict_removal),
		T(test_verify_queue),
		T(test_expired_window),
		T(test_counts_saved),
#undef T
	};

	log_init(1, LOG_LEVEL_WARNING);
	return (cmocka_run_group_tests(tests, NULL, NULL));
}
