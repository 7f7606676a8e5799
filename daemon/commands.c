/*
 * The command table shared by the daemon's status socket (control.c) and
 * its client (ctl.c).  Keep it in the order the usage should show; the man
 * page phoneclaimctl(8) describes each entry and test_docs.py checks that
 * it names them all.
 */
#include "config.h"

#include <stddef.h>
#include <string.h>

#include "commands.h"

const struct command_info command_table[] = {
	{ "status", "", 0, 0, 0, 0, COMMAND_SOCKET,
	  "the daemon, its claims, log stream and store" },
	{ "lookup", "<number>", 1, 1, 1, 0, COMMAND_SOCKET,
	  "who holds a number" },
	{ "user", "<user_id>", 1, 1, 1, 0, COMMAND_SOCKET,
	  "the numbers a user holds" },
	{ "conflicts", "", 0, 0, 0, 0, COMMAND_SOCKET,
	  "numbers held by more users than allowed" },
	{ "release", "<number> [<user_id>]", 1, 2, 1, 1, COMMAND_SOCKET,
	  "free a number, of one user or of all" },
	{ "claim", "<number> <user_id>", 2, 2, 1, 1, COMMAND_SOCKET,
	  "give a number to a user" },
	{ "import", "<file>", 1, 1, 0, 1, COMMAND_CLIENT,
	  "claim number,user_id lines of a CSV file" },
	{ "export", "", 0, 0, 0, 0, COMMAND_SOCKET,
	  "every claim as CSV: user_id,last4,state,since" },
	{ "backfill", "", 0, 0, 0, 1, COMMAND_SOCKET,
	  "read missed events from Auth0 now" },
	{ "reconcile", "[<user_id>]", 0, 1, 1, 1, COMMAND_SOCKET,
	  "check claims against Auth0 now" },
	{ "bootstrap", "", 0, 0, 0, 1, COMMAND_SOCKET,
	  "learn the tenant's phone factors from Auth0" },
	{ "backup", "<directory>", 1, 1, 1, 1, COMMAND_SOCKET,
	  "hot backup of the store to a new directory" },
	{ "help", "", 0, 0, 0, 0, COMMAND_SOCKET,
	  "this list of commands" },
};

const unsigned	command_count =
    sizeof command_table / sizeof command_table[0];

const struct command_info *
command_find(const char *name)
{
	unsigned	i;

	for (i = 0; i < command_count; i++) {
		if (strcmp(command_table[i].name, name) == 0)
			return (&command_table[i]);
	}
	return (NULL);
}

const char *
command_check_args(const struct command_info *cmd, int argc)
{
	if (argc < cmd->min_args)
		return ("missing_argument");
	if (argc > cmd->max_args && !cmd->join)
		return ("invalid_argument");
	return (NULL);
}
