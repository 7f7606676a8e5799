/*
 * Fuzz target: the configuration parser, conf_load(), on any bytes.
 *
 * The input is written to a file, since conf_load reads a path as the
 * daemon does (a memfd, named by /proc/self/fd).  "@D@" in the input
 * stands for a private directory that holds secret files (api.token,
 * log-stream.token, tls.key, client.secret, mode 0600) and a public one
 * (public, mode 0644), so that seeds can reach past the secret-file
 * checks.  A configuration that loads must hold what the rest of the
 * daemon relies on.
 */
#include "config.h"

#include <sys/mman.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "phoneclaimd.h"
#include "unit.h"
#include "xmalloc.h"

#include "fuzz.h"

#define FUZZ_CONF_DIR	"@D@"

static void	fuzz_conf_init(void);
static char	*fuzz_conf_expand(const uint8_t *, size_t, size_t *);
static void	fuzz_conf_check(const struct conf *);

static const char	*fuzz_conf_secrets[] = { "api.token",
			    "log-stream.token", "tls.key", "client.secret" };
static char		*fuzz_conf_path;
static int		 fuzz_conf_fd = -1;

/* Make the secret files and name the configuration file, once. */
static void
fuzz_conf_init(void)
{
	const char	*dir = fuzz_dir();
	size_t		 i;

	log_init(1, LOG_LEVEL_DEBUG);
	for (i = 0; i < sizeof fuzz_conf_secrets / sizeof *fuzz_conf_secrets;
	    i++)
		free(unit_write(dir, fuzz_conf_secrets[i], "s3cret\n", 0600));
	free(unit_write(dir, "public", "s3cret\n", 0644));
	/*
	 * The file lives in memory: conf_load opens it by its /proc name.
	 * A file on disk, rewritten 10^5 times a minute, made the disk the
	 * bottleneck.
	 */
	if ((fuzz_conf_fd = memfd_create("fuzz.conf", MFD_CLOEXEC)) == -1) {
		perror("memfd_create");
		exit(99);
	}
	xasprintf(&fuzz_conf_path, "/proc/self/fd/%d", fuzz_conf_fd);
}

/* The input with each "@D@" replaced by the directory; *len its length. */
static char *
fuzz_conf_expand(const uint8_t *data, size_t size, size_t *len)
{
	const char	*dir = fuzz_dir();
	size_t		 dlen = strlen(dir), mlen = strlen(FUZZ_CONF_DIR);
	size_t		 i, n = 0;
	char		*out;

	/* At worst every byte starts a marker. */
	out = xmalloc(size * (dlen + 1) + 1);
	for (i = 0; i < size; i++) {
		if (size - i >= mlen && memcmp(data + i, FUZZ_CONF_DIR,
		    mlen) == 0) {
			memcpy(out + n, dir, dlen);
			n += dlen;
			i += mlen - 1;
		} else
			out[n++] = (char)data[i];
	}
	*len = n;
	return (out);
}

/* What main.c and the modules take for granted of a loaded config. */
static void
fuzz_conf_check(const struct conf *c)
{
	FUZZ_CHECK(c->listen != NULL && c->state_dir != NULL &&
	    c->status_socket != NULL && c->hash_key_file != NULL);
	FUZZ_CHECK(c->api_token_file != NULL &&
	    c->log_stream_token_file != NULL);
	FUZZ_CHECK(c->state_dir[0] == '/' && c->hash_key_file[0] == '/');
	FUZZ_CHECK(c->mode == CONF_MODE_ENFORCE ||
	    c->mode == CONF_MODE_MONITOR);
	FUZZ_CHECK(c->log_level >= LOG_LEVEL_ERROR &&
	    c->log_level <= LOG_LEVEL_DEBUG);
	FUZZ_CHECK(c->pending_ttl >= 1 && c->pending_ttl <= 86400);
	FUZZ_CHECK(c->max_users_per_number >= 1 &&
	    c->max_users_per_number <= 1000);
	FUZZ_CHECK(c->max_body_size >= 1024);
	FUZZ_CHECK((c->tls_cert_file == NULL) == (c->tls_key_file == NULL));
	FUZZ_CHECK((c->auth0_domain == NULL) == (c->auth0_client_id == NULL));
	FUZZ_CHECK(!c->on_conflict_remove || c->auth0_domain != NULL);
	FUZZ_CHECK(c->default_region == NULL || strlen(c->default_region) == 2);
}

/* Load the input as a configuration file. */
int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct conf	*c;
	char		*text, *cause = NULL;
	size_t		 len;

	if (fuzz_conf_path == NULL)
		fuzz_conf_init();
	text = fuzz_conf_expand(data, size, &len);
	if (ftruncate(fuzz_conf_fd, 0) != 0 ||
	    pwrite(fuzz_conf_fd, text, len, 0) != (ssize_t)len) {
		perror(fuzz_conf_path);
		exit(99);
	}
	free(text);
	if ((c = conf_load(fuzz_conf_path, &cause)) == NULL) {
		/* Every refusal says where. */
		FUZZ_CHECK(cause != NULL && strncmp(cause, fuzz_conf_path,
		    strlen(fuzz_conf_path)) == 0);
		free(cause);
		return (0);
	}
	fuzz_conf_check(c);
	conf_free(c);
	return (0);
}
