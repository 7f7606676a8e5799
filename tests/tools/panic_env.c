/*
 * Test tool: join the Berkeley DB environment in a state directory and
 * mark it panicked, as a failed disk or a corrupted region would.  The
 * daemon using it must stop answering 2xx and exit non-zero.
 *
 * usage: panic_env STATE_DIR
 */
#include "config.h"

#include <db.h>
#include <stdio.h>

/* Join the environment and panic it. */
int
main(int argc, char **argv)
{
	DB_ENV	*env;
	int	 ret;

	if (argc != 2) {
		fprintf(stderr, "usage: panic_env state_dir\n");
		return (2);
	}
	if ((ret = db_env_create(&env, 0)) != 0) {
		fprintf(stderr, "db_env_create: %s\n", db_strerror(ret));
		return (1);
	}
	if ((ret = env->open(env, argv[1], DB_JOINENV, 0)) != 0) {
		fprintf(stderr, "open %s: %s\n", argv[1], db_strerror(ret));
		env->close(env, 0);
		return (1);
	}
	if ((ret = env->set_flags(env, DB_PANIC_ENVIRONMENT, 1)) != 0) {
		fprintf(stderr, "panic: %s\n", db_strerror(ret));
		return (1);
	}
	/* Closing a panicked handle reports the panic; that is expected. */
	env->close(env, 0);
	return (0);
}
