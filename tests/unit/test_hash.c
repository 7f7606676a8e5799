/*
 * Unit tests for hash.c: the key file, number keys and token digests.
 */
#include "config.h"

#include <sys/stat.h>

#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "phoneclaimd.h"
#include "unit.h"
#include "xmalloc.h"

static void
test_key_created_private(void **state)
{
	char		*dir = unit_tmpdir(), *path, *cause = NULL;
	struct stat	 sb;

	(void)state;
	xasprintf(&path, "%s/hash.key", dir);
	assert_int_equal(hash_init(path, &cause), 0);
	assert_int_equal(stat(path, &sb), 0);
	assert_int_equal(sb.st_size, 32);
	assert_int_equal(sb.st_mode & 0777, 0600);
	hash_free();
	unit_rmtree(dir);
	free(path);
	free(dir);
}

static void
test_key_reused_and_hmac(void **state)
{
	char		*dir = unit_tmpdir(), *path, *cause = NULL;
	unsigned char	 key[32], a[32], b[32], want[32];
	unsigned int	 len = 32;
	FILE		*f;

	(void)state;
	memset(key, 0x42, sizeof key);
	xasprintf(&path, "%s/hash.key", dir);
	f = fopen(path, "w");
	fwrite(key, 1, sizeof key, f);
	fclose(f);
	chmod(path, 0600);
	assert_int_equal(hash_init(path, &cause), 0);
	hash_number("+447700900123", a);
	hash_number("+447700900123", b);
	assert_memory_equal(a, b, NUMKEY_LEN);
	/* The key of a number is the first 16 bytes of its HMAC-SHA256. */
	HMAC(EVP_sha256(), key, 32, (const unsigned char *)"+447700900123",
	    13, want, &len);
	assert_int_equal(NUMKEY_LEN, 16);
	assert_memory_equal(a, want, NUMKEY_LEN);
	hash_number("+447700900124", b);
	assert_memory_not_equal(a, b, NUMKEY_LEN);
	/* The index key: 16 bytes of the HMAC of its own fixed string. */
	hash_index_key(a);
	HMAC(EVP_sha256(), key, 32, (const unsigned char *)
	    "phoneclaimd index key", 21, want, &len);
	assert_memory_equal(a, want, STORE_INDEX_KEY_LEN);
	hash_free();
	unit_rmtree(dir);
	free(path);
	free(dir);
}

static void
test_key_refused(void **state)
{
	char	*dir = unit_tmpdir(), *path, *cause = NULL;

	(void)state;
	path = unit_write(dir, "short.key", "0123456789", 0600);
	assert_int_equal(hash_init(path, &cause), -1);
	assert_non_null(strstr(cause, "exactly 32 bytes"));
	free(cause);
	free(path);
	path = unit_write(dir, "open.key", "0123456789abcdef0123456789abcdef",
	    0644);
	assert_int_equal(hash_init(path, &cause), -1);
	assert_non_null(strstr(cause, "group or others"));
	free(cause);
	free(path);
	unit_rmtree(dir);
	free(dir);
}

/* hash_load never creates a key; the check value depends on the key. */
static void
test_key_load_and_check(void **state)
{
	char	*dir = unit_tmpdir(), *path, *cause = NULL;
	char	 a[HASH_CHECK_LEN + 1], b[HASH_CHECK_LEN + 1];

	(void)state;
	xasprintf(&path, "%s/hash.key", dir);
	assert_int_equal(hash_load(path, &cause), -1);
	assert_non_null(strstr(cause, path));
	assert_int_equal(access(path, F_OK), -1);
	free(cause);
	free(path);
	path = unit_write(dir, "a.key", "0123456789abcdef0123456789abcdef",
	    0600);
	assert_int_equal(hash_load(path, &cause), 0);
	hash_check(a);
	assert_int_equal(strlen(a), HASH_CHECK_LEN);
	assert_int_equal(strspn(a, "0123456789abcdef"), HASH_CHECK_LEN);
	/* The check is not the key, nor anything that shows it. */
	assert_null(strstr(a, "30313233"));
	hash_check(b);
	assert_string_equal(a, b);
	free(path);
	path = unit_write(dir, "b.key", "0123456789abcdef0123456789abcdeF",
	    0600);
	assert_int_equal(hash_load(path, &cause), 0);
	hash_check(b);
	assert_string_not_equal(a, b);
	hash_free();
	free(path);
	unit_rmtree(dir);
	free(dir);
}

#define KEYED_INPUTS	300
#define KEYED_THREADS	4

static char		keyed_in[KEYED_INPUTS][KEYED_INPUTS + 2];
static unsigned char	keyed_want[KEYED_INPUTS][32];

/* Inputs of every length from 1 to KEYED_INPUTS, past one SHA-256 block. */
static void
keyed_expect(const unsigned char *key)
{
	unsigned int	len = 32;
	size_t		i, j;

	for (i = 0; i < KEYED_INPUTS; i++) {
		keyed_in[i][0] = '+';
		for (j = 1; j <= i; j++)
			keyed_in[i][j] = (char)('0' + (i * 7 + j) % 10);
		keyed_in[i][i + 1] = '\0';
		HMAC(EVP_sha256(), key, 32, (const unsigned char *)keyed_in[i],
		    i + 1, keyed_want[i], &len);
	}
}

/* Hash every input, compare with HMAC(): the number of mismatches. */
static void *
keyed_check(void *arg)
{
	unsigned char	got[NUMKEY_LEN];
	size_t		i, *bad = arg;

	for (i = 0; i < KEYED_INPUTS; i++) {
		hash_number(keyed_in[i], got);
		if (memcmp(got, keyed_want[i], NUMKEY_LEN) != 0)
			(*bad)++;
	}
	return (NULL);
}

/*
 * The keyed inner and outer states give the digest of OpenSSL's one-shot
 * HMAC() for inputs of any length, after a new key too, and from several
 * threads at once (the claim workers).
 */
static void
test_keyed_state_same_digest(void **state)
{
	char		*dir = unit_tmpdir(), *path, *cause = NULL;
	unsigned char	 key[33];	/* 32 bytes, none of them 0, and a NUL */
	pthread_t	 t[KEYED_THREADS];
	size_t		 i, bad[KEYED_THREADS];

	(void)state;
	for (i = 0; i < 32; i++)
		key[i] = (unsigned char)(i * 37 + 11);
	key[32] = '\0';
	path = unit_write(dir, "a.key", (const char *)key, 0600);
	assert_int_equal(hash_load(path, &cause), 0);
	keyed_expect(key);
	memset(bad, 0, sizeof bad);
	keyed_check(&bad[0]);
	assert_int_equal(bad[0], 0);
	for (i = 0; i < KEYED_THREADS; i++)
		assert_int_equal(pthread_create(&t[i], NULL, keyed_check,
		    &bad[i]), 0);
	for (i = 0; i < KEYED_THREADS; i++) {
		assert_int_equal(pthread_join(t[i], NULL), 0);
		assert_int_equal(bad[i], 0);
	}
	free(path);
	/* Another key: the states follow it. */
	memset(key, 0xa5, 32);
	path = unit_write(dir, "b.key", (const char *)key, 0600);
	assert_int_equal(hash_load(path, &cause), 0);
	keyed_expect(key);
	bad[0] = 0;
	keyed_check(&bad[0]);
	assert_int_equal(bad[0], 0);
	hash_free();
	free(path);
	unit_rmtree(dir);
	free(dir);
}

static void
test_digests(void **state)
{
	unsigned char	a[32], b[32], c[32];

	(void)state;
	hash_digest("token", 5, a);
	hash_digest("token", 5, b);
	hash_digest("tokeN", 5, c);
	assert_true(hash_digest_equal(a, b));
	assert_false(hash_digest_equal(a, c));
	hash_digest("token\n", 6, c);
	assert_false(hash_digest_equal(a, c));
	/* SHA-256 itself (FIPS 180-2's "abc"). */
	hash_digest("abc", 3, a);
	assert_memory_equal(a, "\xba\x78\x16\xbf\x8f\x01\xcf\xea"
	    "\x41\x41\x40\xde\x5d\xae\x22\x23\xb0\x03\x61\xa3\x96\x17"
	    "\x7a\x9c\xb4\x10\xff\x61\xf2\x00\x15\xad", 32);
}

int
main(void)
{
	const struct CMUnitTest	tests[] = {
		cmocka_unit_test(test_key_created_private),
		cmocka_unit_test(test_key_reused_and_hmac),
		cmocka_unit_test(test_key_refused),
		cmocka_unit_test(test_key_load_and_check),
		cmocka_unit_test(test_keyed_state_same_digest),
		cmocka_unit_test(test_digests),
	};

	return (cmocka_run_group_tests(tests, NULL, NULL));
}
