/*
 * C interface to the libphonenumber shim (daemon/phone.cc).
 */
#ifndef PHONE_H
#define PHONE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Longest E.164 string: '+' and 15 digits, plus the terminating NUL. */
#define PHONE_E164_SIZE	17
/* Longest input accepted before parsing, in bytes. */
#define PHONE_INPUT_MAX	64

/*
 * Normalise the len bytes at in to E.164 in out (PHONE_E164_SIZE bytes).
 * region is an ISO 3166 code for numbers written without '+', or NULL.
 * Returns 0, or -1 if the text is not a possible phone number.
 */
int	phone_normalise(const char *in, size_t len, const char *region,
	    char *out);
/*
 * The parts of phone_normalise, for a worker thread: phone_lookup answers
 * from the cache (1, *rv set) or not (0); phone_parse_uncached is the slow
 * part and safe on any thread; phone_remember stores an answer (e164, or
 * NULL for "not a number").  phone_lookup and phone_remember: loop only.
 */
int	phone_lookup(const char *in, size_t len, const char *region,
	    char *out, int *rv);
int	phone_parse_uncached(const char *in, size_t len, const char *region,
	    char *out);
void	phone_remember(const char *in, size_t len, const char *region,
	    const char *e164);
/*
 * Take an answer of phone_parse_uncached made on another thread (rv,
 * e164): remembered and counted as libphonenumber's unless the cache
 * knows the text already.  Loop only.
 */
void	phone_learn(const char *in, size_t len, const char *region, int rv,
	    const char *e164);
/* Return 1 if region is a region libphonenumber knows, else 0. */
int	phone_region_known(const char *region);
/* Answers given by the cache and by libphonenumber since the start. */
void	phone_cache_stats(uint64_t *hits, uint64_t *misses);
/* Clear and free the cache (at exit; tests). */
void	phone_cache_free(void);

#ifdef __cplusplus
}
#endif

#endif
