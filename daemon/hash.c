/*
 * The hash key and the keys of phone numbers.  A number is stored only as
 * HMAC-SHA256(hash key, E.164 string); the key is 32 random bytes created
 * 0600 on first start and never logged.  Tokens are compared through their
 * SHA-256 digests with a constant-time compare.
 *
 * Every claim hashes its number, so the HMAC keeps its keyed state: the
 * SHA-256 states after the key's inner and outer pads (RFC 2104) are
 * computed once when the key is loaded, and each HMAC copies them instead
 * of keying again (OpenSSL 3's one-shot HMAC() fetched SHA-256 and hashed
 * both pads on each call: about 2.2 us against 0.6 us on the claim path's
 * machine).  The two states are only read after that, so any thread may
 * copy them.  SHA-256 itself is fetched once (EVP_sha256() makes every
 * EVP_Digest look it up again).
 */
#include "config.h"

#include <sys/stat.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <pthread.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "log.h"
#include "phoneclaimd.h"
#include "xmalloc.h"

#define HASH_KEY_LEN	32
#define HASH_BLOCK_LEN	64	/* SHA-256's block, the HMAC pads' length */
#define HASH_IPAD	0x36
#define HASH_OPAD	0x5c
#define HASH_CHECK_INPUT	"phoneclaimd hash key check"
#define HASH_INDEX_INPUT	"phoneclaimd index key"

static int	hash_create(const char *, char **);
static int	hash_read(const char *, char **);
static void	hash_hmac(const char *, const char *, unsigned char *);
static void	hash_md_fetch(void);
static const EVP_MD *hash_md(void);
static EVP_MD_CTX *hash_pad_state(unsigned char);
static void	hash_pads_free(void);
static int	hash_finish(EVP_MD_CTX *, const EVP_MD_CTX *, const void *,
		    size_t, unsigned char *);

static unsigned char	hash_key[HASH_KEY_LEN];
static int		hash_ready;
static EVP_MD		*hash_sha256;
static pthread_once_t	 hash_md_once = PTHREAD_ONCE_INIT;
/* SHA-256 after (key ^ ipad) and after (key ^ opad); read-only once set. */
static EVP_MD_CTX	*hash_inner, *hash_outer;

/* Fetch SHA-256 once, for every thread. */
static void
hash_md_fetch(void)
{
	if ((hash_sha256 = EVP_MD_fetch(NULL, "SHA256", NULL)) == NULL)
		fatalx("SHA-256 is not available");
}

/* SHA-256, fetched on the first call. */
static const EVP_MD *
hash_md(void)
{
	if (pthread_once(&hash_md_once, hash_md_fetch) != 0)
		fatalx("pthread_once");
	return (hash_sha256);
}

/* A SHA-256 state that has hashed the key XOR a pad byte, one block. */
static EVP_MD_CTX *
hash_pad_state(unsigned char pad)
{
	unsigned char	 block[HASH_BLOCK_LEN];
	EVP_MD_CTX	*ctx;
	size_t		 i;

	memset(block, pad, sizeof block);
	for (i = 0; i < HASH_KEY_LEN; i++)
		block[i] ^= hash_key[i];
	if ((ctx = EVP_MD_CTX_new()) == NULL ||
	    EVP_DigestInit_ex(ctx, hash_md(), NULL) != 1 ||
	    EVP_DigestUpdate(ctx, block, sizeof block) != 1)
		fatalx("HMAC-SHA256: cannot key the state");
	explicit_bzero(block, sizeof block);
	return (ctx);
}

/* Forget the keyed states (OpenSSL clears a SHA-256 state it frees). */
static void
hash_pads_free(void)
{
	EVP_MD_CTX_free(hash_inner);
	EVP_MD_CTX_free(hash_outer);
	hash_inner = hash_outer = NULL;
}

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
	hash_pads_free();
	hash_inner = hash_pad_state(HASH_IPAD);
	hash_outer = hash_pad_state(HASH_OPAD);
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

/* Go on from a keyed state with len bytes at p, into out: 0 or -1. */
static int
hash_finish(EVP_MD_CTX *ctx, const EVP_MD_CTX *from, const void *p,
    size_t len, unsigned char *out)
{
	unsigned int	n = HASH_DIGEST_LEN;

	if (EVP_MD_CTX_copy_ex(ctx, from) != 1 ||
	    EVP_DigestUpdate(ctx, p, len) != 1 ||
	    EVP_DigestFinal_ex(ctx, out, &n) != 1 || n != HASH_DIGEST_LEN)
		return (-1);
	return (0);
}

/*
 * HMAC-SHA256 of a string under the key, into mac (HASH_DIGEST_LEN):
 * SHA-256(key ^ opad, SHA-256(key ^ ipad, s)), from the keyed states.
 */
static void
hash_hmac(const char *who, const char *s, unsigned char *mac)
{
	unsigned char	 inner[HASH_DIGEST_LEN];
	EVP_MD_CTX	*ctx;
	int		 rv;

	if (!hash_ready || hash_inner == NULL || hash_outer == NULL)
		fatalx("%s: no hash key", who);
	if ((ctx = EVP_MD_CTX_new()) == NULL)
		fatalx("%s: out of memory", who);
	rv = hash_finish(ctx, hash_inner, s, strlen(s), inner);
	if (rv == 0)
		rv = hash_finish(ctx, hash_outer, inner, sizeof inner, mac);
	EVP_MD_CTX_free(ctx);
	explicit_bzero(inner, sizeof inner);
	if (rv != 0)
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
	hash_pads_free();
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

	if (EVP_Digest(buf, len, out, &n, hash_md(), NULL) != 1 ||
	    n != HASH_DIGEST_LEN)
		fatalx("hash_digest: SHA-256 failed");
}

/* Compare two digests in constant time; 1 if equal. */
int
hash_digest_equal(const unsigned char *a, const unsigned char *b)
{
	return (CRYPTO_memcmp(a, b, HASH_DIGEST_LEN) == 0);
}
