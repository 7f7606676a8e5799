/*
 * Helpers shared by the unit tests: temporary directories and files.
 */
#ifndef UNIT_H
#define UNIT_H

#include <stddef.h>

#include "phoneclaimd.h"

/* A claim store in a temporary directory, with a hash key and a config. */
struct unit_claims {
	char		*dir;
	struct store	*store;
	struct conf	 conf;	/* enforce, pending_ttl 600, one user */
};

struct unit_claims *unit_claims_open(void);
void	 unit_claims_close(struct unit_claims *);
char	*unit_tmpdir(void);
void	 unit_rmtree(const char *);
char	*unit_write(const char *, const char *, const char *, int);

#endif
