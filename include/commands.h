/*
 * The commands of the status socket and of phoneclaimctl, in one table:
 * the daemon's "help" answer, phoneclaimctl's usage and both sides'
 * argument checks come from it, so that they cannot disagree.
 */
#ifndef COMMANDS_H
#define COMMANDS_H

/* Where a command runs. */
#define COMMAND_SOCKET	0	/* sent to the daemon */
#define COMMAND_CLIENT	1	/* phoneclaimctl's own (import, help) */

struct command_info {
	const char	*name;
	const char	*args;		/* as usage shows them, or "" */
	int		 min_args;
	int		 max_args;	/* the last one takes the rest... */
	int		 join;		/* ... joined by blanks */
	int		 admin;		/* root or the daemon's uid only */
	int		 where;		/* COMMAND_SOCKET or COMMAND_CLIENT */
	const char	*summary;	/* one line for usage and help */
};

extern const struct command_info	command_table[];
extern const unsigned			command_count;

/* The command called name, or NULL. */
const struct command_info *command_find(const char *name);
/* Why argc arguments do not fit cmd ("missing_argument",
 * "invalid_argument"), or NULL if they do. */
const char	*command_check_args(const struct command_info *cmd, int argc);

#endif
