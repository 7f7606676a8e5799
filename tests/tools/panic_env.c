/*
 * Test tool: join the Berkeley DB environment in a state directory and
 * mark it panicked, as a failed disk or a corrupted region would.  The
 * daemon using it must stop answering 2xx and exit non-zero.
 *
 * With -l, hold a write lock instead: the lock on meta.db's schema
 * version, which nothing but the daemon's watchdog probe reads, until
 * standard input ends.  "locked" on standard output says it is held; a
 * daemon's store that reads the record then stops answering.
 *
 * usage: panic_env [-l] STATE_DIR
 */
#include "config.h"

#include <db.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static int	panic_env_lock(DB_ENV *);

/* Hold a write lock on the schema version until stdin ends. */
static int
panic_env_lock(DB_ENV *env)
{
	DB	*db;
	DB_TXN	*txn;
	DBT	 key, data;
	int	 ret;

	if ((ret = db_create(&db, env, 0)) != 0 ||
	    (ret = db->open(db, NULL, "meta.db", NULL, DB_UNKNOWN,
	    DB_AUTO_COMMIT, 0)) != 0) {
		fprintf(stderr, "meta.db: %s\n", db_strerror(ret));
		return (1);
	}
	if ((ret = env->txn_begin(env, NULL, &txn, 0)) != 0) {
		fprintf(stderr, "txn_begin: %s\n", db_strerror(ret));
		return (1);
	}
	memset(&key, 0, sizeof key);
	memset(&data, 0, sizeof data);
	key.data = "schema_version";
	key.size = (u_int32_t)strlen("schema_version");
	if ((ret = db->get(db, txn, &key, &data, DB_RMW)) != 0) {
		fprintf(stderr, "get: %s\n", db_strerror(ret));
		(void)txn->abort(txn);
		return (1);
	}
	printf("locked\n");
	fflush(stdout);
	while (getchar() != EOF)
		;
	(void)txn->abort(txn);
	(void)db->close(db, 0);
	return (0);
}

/* Join the environment and panic it, or hold a lock in it. */
int
main(int argc, char **argv)
{
	DB_ENV	*env;
	int	 ret, lock = 0;

	if (argc == 3 && strcmp(argv[1], "-l") == 0) {
		lock = 1;
		argv++;
		argc--;
	}
	if (argc != 2) {
		fprintf(stderr, "usage: panic_env [-l] state_dir\n");
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
	if (lock) {
		ret = panic_env_lock(env);
		env->close(env, 0);
		return (ret);
	}
	if ((ret = env->set_flags(env, DB_PANIC_ENVIRONMENT, 1)) != 0) {
		fprintf(stderr, "panic: %s\n", db_strerror(ret));
		return (1);
	}
	/*
	 * A panicked handle cannot be closed: it frees nothing, so a build
	 * with LeakSanitizer would fail on the leak.  Leave at once, as the
	 * daemon itself does after a panic.
	 */
	fflush(stdout);
	_exit(0);
}
