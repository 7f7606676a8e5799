/*
 * phoneclaimctl: the command-line client of the status socket.
 *
 * The status socket itself arrives with the operations work (DESIGN
 * section 5); until then this program only explains itself.
 */
#include "config.h"

#include <stdio.h>
#include <string.h>

static void	ctl_usage(FILE *);

/* Print usage to f. */
static void
ctl_usage(FILE *f)
{
	fprintf(f, "usage: phoneclaimctl [-s socket] command [args]\n"
	    "\n"
	    "phoneclaimctl %s is a placeholder: the status socket and its\n"
	    "commands (status, lookup, user, conflicts, release, claim,\n"
	    "import, export) are not implemented yet.\n", PACKAGE_VERSION);
}

/* Explain that the control client is not there yet. */
int
main(int argc, char **argv)
{
	if (argc == 2 && (strcmp(argv[1], "-h") == 0 ||
	    strcmp(argv[1], "--help") == 0)) {
		ctl_usage(stdout);
		return (0);
	}
	ctl_usage(stderr);
	return (2);
}
