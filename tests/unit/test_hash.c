/*
 * Unit tests for hash.c: the key file, number keys and token digests.
 */
#include "config.h"

#include <sys/stat.h>

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
}

int
main(void)
{
	const struct CMUnitTest	tests[] = {
		cmocka_unit_test(test_key_created_private),
		cmocka_unit_test(test_key_reused_and_hmac),
		cmocka_unit_test(test_key_refused),
		cmocka_unit_test(test_key_load_and_check),
		cmocka_unit_test(test_digests),
	};

	return (cmocka_run_group_tests(tests, NULL, NULL));
}
