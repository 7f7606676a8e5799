/*
 * The hash key and the keys of phone numbers.  A number is stored only as
 * HMAC-SHA256(hash key, E.164 string); the key is 32 random bytes created
 * 0600 on first start and never logged.  Tokens are compared through their
 * SHA-256 digests with a constant-time compare.
 */
#include "config.h"

#include <sys/stat.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include "log.h"
#include "phoneclaimd.h"
#include "xmalloc.h"

#define HASH_KEY_LEN	32
#define HASH_CHECK_INPUT	"phoneclaimd hash key check"
#define HASH_INDEX_INPUT	"phoneclaimd index key"

static int	hash_create(const char *, char **);
static int	hash_read(const char *, char **);
static void	hash_hmac(const char *, const char *, unsigned char *);

static unsigned char	hash_key[HASH_KEY_LEN];
static int		hash_ready;

/* Write a new random key to path atomically, readable by the owner only. */
static int
hash_create(const char *path, char **cause)
{
	unsigned char	 key[HASH_KEY_LEN];
	char		*tmp;
	int		 fd;

	if (RAND_bytes(key, sizeof key) != 1) {
		xasprintf(cause, "cannot get random bytes for the hash key");
		return (-1);
	}
	xasprintf(&tmp, "%s.tmp", path);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd == -1) {
		xasprintf(cause, "%s: %s", tmp, strerror(errno));
		goto fail;
	}
	if (write(fd, key, sizeof key) != (ssize_t)sizeof key ||
	    fsync(fd) != 0) {
		xasprintf(cause, "%s: %s", tmp, strerror(errno));
		close(fd);
		unlink(tmp);
		goto fail;
	}
	close(fd);
	if (rename(tmp, path) != 0) {
		xasprintf(cause, "%s: %s", path, strerror(errno));
		unlink(tmp);
		goto fail;
	}
	free(tmp);
	explicit_bzero(key, sizeof key);
	log_info("created a new hash key in %s", path);
	return (0);
fail:
	free(tmp);
	explicit_bzero(key, sizeof key);
	return (-1);
}

/* Read the key from path, which must be private and exactly 32 bytes. */
static int
hash_read(const char *path, char **cause)
{
	unsigned char	buf[HASH_KEY_LEN + 1];
	size_t		len;

	if (conf_read_private(path, buf, sizeof buf, &len, cause) != 0)
		return (-1);
	if (len != HASH_KEY_LEN) {
		xasprintf(cause, "%s: a hash key is exactly %d bytes",
		    path, HASH_KEY_LEN);
		explicit_bzero(buf, sizeof buf);
		return (-1);
	}
	memcpy(hash_key, buf, HASH_KEY_LEN);
	explicit_bzero(buf, sizeof buf);
	return (0);
}

/* Load the hash key from path, creating it on first start. */
int
hash_init(const char *path, char **cause)
{
	if (access(path, F_OK) != 0) {
		if (errno != ENOENT) {
			xasprintf(cause, "%s: %s", path, strerror(errno));
			return (-1);
		}
		if (hash_create(path, cause) != 0)
			return (-1);
	}
	if (hash_read(path, cause) != 0)
		return (-1);
	hash_ready = 1;
	return (0);
}

/*
 * Load the key from path, never creating it: for a store that already has
 * data, a new key would orphan every number key in it.
 */
int
hash_load(const char *path, char **cause)
{
	if (hash_read(path, cause) != 0)
		return (-1);
	hash_ready = 1;
	return (0);
}

/* HMAC-SHA256 of a string under the key, into mac (HASH_DIGEST_LEN). */
static void
hash_hmac(const char *who, const char *s, unsigned char *mac)
{
	unsigned int	len = HASH_DIGEST_LEN;

	if (!hash_ready)
		fatalx("%s: no hash key", who);
	if (HMAC(EVP_sha256(), hash_key, sizeof hash_key,
	    (const unsigned char *)s, strlen(s), mac, &len) == NULL ||
	    len != HASH_DIGEST_LEN)
		fatalx("%s: HMAC-SHA256 failed", who);
}

/*
 * Write into out (HASH_CHECK_LEN + 1 bytes) the hex HMAC of a fixed string
 * under the key: the store keeps it, so that a start with another key (a
 * wrong file restored, a key regenerated) is refused.  It tells nothing
 * about the key itself.
 */
void
hash_check(char *out)
{
	unsigned char	 mac[HASH_DIGEST_LEN];
	size_t		 i;

	hash_hmac("hash_check", HASH_CHECK_INPUT, mac);
	for (i = 0; i < sizeof mac; i++)
		snprintf(out + 2 * i, 3, "%02x", mac[i]);
}

/*
 * Write into out (STORE_INDEX_KEY_LEN bytes) the key of the store's user
 * and enrolment indexes: the HMAC of another fixed string under the hash
 * key, cut to 16 bytes.  Every daemon that holds the hash key derives the
 * same one, as the members of a replication group must.
 */
void
hash_index_key(unsigned char *out)
{
	unsigned char	 mac[HASH_DIGEST_LEN];

	hash_hmac("hash_index_key", HASH_INDEX_INPUT, mac);
	memcpy(out, mac, STORE_INDEX_KEY_LEN);
	explicit_bzero(mac, sizeof mac);
}

/* Forget the key. */
void
hash_free(void)
{
	explicit_bzero(hash_key, sizeof hash_key);
	hash_ready = 0;
}

/*
 * Compute the key of a number given as an E.164 string: the first 16 bytes
 * of its HMAC-SHA256.  128 bits keep two numbers apart as surely as 256
 * (a collision among 10^9 numbers has odds of about 10^-21) and take half
 * the disk in every key and index that holds them.
 */
void
hash_number(const char *e164, unsigned char *out)
{
	unsigned char	mac[HASH_DIGEST_LEN];

	hash_hmac("hash_number", e164, mac);
	memcpy(out, mac, NUMKEY_LEN);
}

/* Compute the SHA-256 digest of a buffer (used for tokens). */
void
hash_digest(const void *buf, size_t len, unsigned char *out)
{
	unsigned int	n = HASH_DIGEST_LEN;

	if (EVP_Digest(buf, len, out, &n, EVP_sha256(), NULL) != 1 ||
	    n != HASH_DIGEST_LEN)
		fatalx("hash_digest: SHA-256 failed");
}

/* Compare two digests in constant time; 1 if equal. */
int
hash_digest_equal(const unsigned char *a, const unsigned char *b)
{
	return (CRYPTO_memcmp(a, b, HASH_DIGEST_LEN) == 0);
}
