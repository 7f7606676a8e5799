/*
 * Helpers shared by the unit tests: temporary directories and files.
 */
#include "config.h"

#include <sys/stat.h>

#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "unit.h"
#include "xmalloc.h"

static int	unit_rm_cb(const char *, const struct stat *, int,
		    struct FTW *);

/* Make a fresh private directory under TMPDIR or /tmp. */
char *
unit_tmpdir(void)
{
	const char	*base = getenv("TMPDIR");
	char		*dir;

	xasprintf(&dir, "%s/pcd-unit-XXXXXX", base != NULL ? base : "/tmp");
	if (mkdtemp(dir) == NULL) {
		perror("mkdtemp");
		exit(99);
	}
	return (dir);
}

/* Remove one entry of a tree. */
static int
unit_rm_cb(const char *path, const struct stat *sb, int type,
    struct FTW *ftw)
{
	(void)sb;
	(void)type;
	(void)ftw;
	return (remove(path));
}

/* Remove a directory and everything below it. */
void
unit_rmtree(const char *dir)
{
	nftw(dir, unit_rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

/* Write text to dir/name with the given mode; return the path. */
char *
unit_write(const char *dir, const char *name, const char *text, int mode)
{
	char	*path;
	int	 fd;

	xasprintf(&path, "%s/%s", dir, name);
	unlink(path);
	if ((fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode)) == -1 ||
	    write(fd, text, strlen(text)) != (ssize_t)strlen(text) ||
	    fchmod(fd, mode) != 0) {
		perror(path);
		exit(99);
	}
	close(fd);
	return (path);
}

/* Open a store and the claim rules in a fresh directory; exit on error. */
struct unit_claims *
unit_claims_open(void)
{
	struct unit_claims	*u;
	unsigned char		 ikey[STORE_INDEX_KEY_LEN];
	char			*cause = NULL, *key, check[HASH_CHECK_LEN + 1];

	u = xcalloc(1, sizeof *u);
	u->dir = unit_tmpdir();
	xasprintf(&key, "%s/hash.key", u->dir);
	if (hash_init(key, &cause) != 0) {
		fprintf(stderr, "unit_claims_open: %s\n", cause);
		exit(99);
	}
	hash_index_key(ikey);
	hash_check(check);
	store_set_keys(ikey, check, key);
	if ((u->store = store_open(u->dir, &cause)) == NULL) {
		fprintf(stderr, "unit_claims_open: %s\n", cause);
		exit(99);
	}
	free(key);
	u->conf.mode = CONF_MODE_ENFORCE;
	u->conf.pending_ttl = 600;
	u->conf.max_users_per_number = 1;
	claims_init(u->store, &u->conf);
	return (u);
}

/* Close what unit_claims_open opened and remove its directory. */
void
unit_claims_close(struct unit_claims *u)
{
	claims_free();
	store_close(u->store);
	hash_free();
	unit_rmtree(u->dir);
	free(u->dir);
	free(u);
}
