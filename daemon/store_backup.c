/*
 * Hot backups of the store (phoneclaimctl backup): a thread with its own
 * handle on the environment copies the databases and the log with
 * DB_ENV->backup, adds the hash key, and runs catastrophic recovery on the
 * copy, so that the directory is a state directory ready to start from.
 */
#include "config.h"

#include <sys/types.h>
#include <sys/file.h>
#include <sys/stat.h>

#include <db.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "log.h"
#include "phoneclaimd.h"
#include "store_int.h"
#include "xmalloc.h"

#define STORE_BACKUP_CACHE	(16 * 1024 * 1024)	/* recovering a backup */
#define STORE_BACKUP_KEY	"hash.key"

/*
 * A hot backup in progress: the thread's own handle on the environment, the
 * pipe on which it says it is done, and what it found.
 */
struct store_backup {
	struct store	*st;
	DB_ENV		*env;
	pthread_t	 thread;
	int		 started;
	int		 fds[2];
	struct event	*ev;
	char		*dir;
	char		*key_file;
	char		 errmsg[200];	/* Berkeley DB's last message */
	struct store_backup_result res;
	void		(*done)(const struct store_backup_result *, void *);
	void		*arg;
};

static void	store_backup_free(struct store_backup *);
static int	store_backup_trusted(const char *, const struct stat *,
		    char **);
static int	store_backup_mkdir(const char *, char **);
static void	*store_backup_main(void *);
static int	store_backup_copy(struct store_backup *);
static int	store_backup_key(struct store_backup *);
static int	store_backup_recover(struct store_backup *);
static int	store_backup_sync(struct store_backup *);
static int	store_backup_fail(struct store_backup *, const char *, int);
static void	store_backup_why(struct store_backup *, const char *, ...)
		    __attribute__((format(printf, 2, 3)));
static void	store_backup_errcall_cb(const DB_ENV *, const char *,
		    const char *);
static void	store_backup_cb(evutil_socket_t, short, void *);

/*
 * Hot backup (phoneclaimctl backup DIR).  A thread with its own handle
 * joined to the environment, as the flusher's, so that the loop goes on
 * serving; one backup at a time.  The thread:
 *
 *   1. checkpoints and removes the log files recovery no longer needs, so
 *      that the copy holds little log;
 *   2. runs DB_ENV->backup: every database file, copied page by page
 *      through the cache while writes go on, then every log file;
 *   3. copies the hash key (without it no number can be looked up);
 *   4. opens the copy as an environment of its own with catastrophic
 *      recovery (DB_RECOVER_FATAL, private regions), as db_hotbackup
 *      does: the pages copied at different moments become consistent with
 *      the log copied after them, as of an instant between the start and
 *      the end of the backup; then checkpoints and removes the log files
 *      the copy no longer needs;
 *   5. syncs every file and the directory, counting files and bytes.
 *
 * Every commit made durable before the backup began is in the copy, which
 * is then a state directory that a daemon can start on as it is.  While the
 * backup runs, store_checkpoint removes no log file: Berkeley DB cannot
 * know which ones a hot backup has still to copy.  The thread logs nothing
 * itself: what it found goes to the loop through the pipe, as the
 * flusher's answers do.
 */

/* Return 1 while a backup runs. */
int
store_backup_running(struct store *st)
{
	return (st->backup != NULL);
}

/*
 * Start a backup of the store and of key_file into dir, an absolute path
 * that must not exist or be an empty directory; done(result, arg) is called
 * on base when it ends.  -1 and *cause if it cannot start.
 */
int
store_backup_start(struct store *st, struct event_base *base,
    const char *dir, const char *key_file,
    void (*done)(const struct store_backup_result *, void *), void *arg,
    char **cause)
{
	struct store_backup	*b;
	int			 ret;

	*cause = NULL;
	if (st->backup != NULL) {
		xasprintf(cause, "a backup is already running");
		return (-1);
	}
	if (st->failed) {
		xasprintf(cause, "the store has failed");
		return (-1);
	}
	if (store_backup_mkdir(dir, cause) != 0)
		return (-1);
	b = xcalloc(1, sizeof *b);
	b->st = st;
	b->fds[0] = b->fds[1] = -1;
	b->dir = xstrdup(dir);
	b->key_file = xstrdup(key_file);
	b->done = done;
	b->arg = arg;
	if ((ret = db_env_create(&b->env, 0)) != 0 ||
	    (ret = b->env->open(b->env, st->dir, DB_JOINENV, 0)) != 0) {
		xasprintf(cause, "cannot join the environment: %s",
		    db_strerror(ret));
		goto fail;
	}
	b->env->app_private = b;
	b->env->set_errcall(b->env, store_backup_errcall_cb);
	if (pipe2(b->fds, O_CLOEXEC) == -1) {
		xasprintf(cause, "pipe: %s", strerror(errno));
		goto fail;
	}
	if ((b->ev = event_new(base, b->fds[0], EV_READ, store_backup_cb,
	    b)) == NULL || event_add(b->ev, NULL) != 0) {
		xasprintf(cause, "cannot watch its pipe");
		goto fail;
	}
	if ((ret = worker_thread(&b->thread, store_backup_main, b)) != 0) {
		xasprintf(cause, "pthread_create: %s", strerror(ret));
		goto fail;
	}
	b->started = 1;
	st->backup = b;
	return (0);

fail:
	if (b->env != NULL)
		(void)b->env->close(b->env, 0);
	b->env = NULL;
	store_backup_free(b);
	return (-1);
}

/*
 * May an existing directory hold the backup?  Only if root or our own uid
 * owns it and neither group nor others may write to it: otherwise its
 * owner, or anyone who may write to it, could later swap hash.key or the
 * databases for their own.
 */
static int
store_backup_trusted(const char *dir, const struct stat *sb, char **cause)
{
	if (sb->st_uid != 0 && sb->st_uid != geteuid()) {
		xasprintf(cause, "%s is owned by uid %u, not by root or the "
		    "daemon's uid %u", dir, (unsigned)sb->st_uid,
		    (unsigned)geteuid());
		return (-1);
	}
	if ((sb->st_mode & (S_IWGRP | S_IWOTH)) != 0) {
		xasprintf(cause, "%s is writable by group or others (mode "
		    "%04o)", dir, (unsigned)(sb->st_mode & 07777));
		return (-1);
	}
	return (0);
}

/*
 * Create the backup directory, mode 0700 (it will hold the hash key), or
 * accept an empty one that we trust and make it 0700.
 */
static int
store_backup_mkdir(const char *dir, char **cause)
{
	struct dirent	*de;
	struct stat	 sb;
	DIR		*d;
	int		 empty = 1;

	if (*dir != '/') {
		xasprintf(cause, "%s: not an absolute path", dir);
		return (-1);
	}
	if (mkdir(dir, STORE_DIR_MODE) == 0)
		return (0);
	if (errno != EEXIST || lstat(dir, &sb) != 0) {
		xasprintf(cause, "cannot create %s: %s", dir, strerror(errno));
		return (-1);
	}
	if (!S_ISDIR(sb.st_mode)) {
		xasprintf(cause, "%s exists and is not a directory", dir);
		return (-1);
	}
	if (store_backup_trusted(dir, &sb, cause) != 0)
		return (-1);
	if ((d = opendir(dir)) == NULL) {
		xasprintf(cause, "%s: %s", dir, strerror(errno));
		return (-1);
	}
	while (empty && (de = readdir(d)) != NULL)
		empty = strcmp(de->d_name, ".") == 0 ||
		    strcmp(de->d_name, "..") == 0;
	closedir(d);
	if (!empty) {
		xasprintf(cause, "%s is not empty", dir);
		return (-1);
	}
	if (chmod(dir, STORE_DIR_MODE) != 0) {
		xasprintf(cause, "chmod %s: %s", dir, strerror(errno));
		return (-1);
	}
	return (0);
}

/* Wait for the thread if it was started, and free everything. */
static void
store_backup_free(struct store_backup *b)
{
	if (b->started)
		pthread_join(b->thread, NULL);
	if (b->ev != NULL)
		event_free(b->ev);
	if (b->fds[0] != -1)
		close(b->fds[0]);
	if (b->fds[1] != -1)
		close(b->fds[1]);
	free(b->dir);
	free(b->key_file);
	free(b);
}

/* The thread: the steps above, then one byte down the pipe. */
static void *
store_backup_main(void *arg)
{
	struct store_backup	*b = arg;
	struct timespec		 t0, t1;
	char			 c = 0;
	int			 ret;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	if (store_backup_copy(b) == 0 && store_backup_key(b) == 0 &&
	    store_backup_recover(b) == 0 && store_backup_sync(b) == 0)
		b->res.ok = 1;
	if ((ret = b->env->close(b->env, 0)) != 0 && b->res.ok)
		(void)store_backup_fail(b, "leaving the environment", ret);
	b->env = NULL;
	clock_gettime(CLOCK_MONOTONIC, &t1);
	b->res.seconds = (double)(t1.tv_sec - t0.tv_sec) +
	    (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
	while (write(b->fds[1], &c, 1) == -1 && errno == EINTR)
		/* again */;
	return (NULL);
}

/* Steps 1 and 2: a checkpoint, then DB_ENV->backup. */
static int
store_backup_copy(struct store_backup *b)
{
	DB_ENV	*env = b->env;
	int	 ret;

	b->errmsg[0] = '\0';
	if ((ret = env->txn_checkpoint(env, 0, 0, 0)) != 0 ||
	    (ret = env->log_archive(env, NULL, DB_ARCH_REMOVE)) != 0)
		return (store_backup_fail(b, "checkpoint", ret));
	if ((ret = env->backup(env, b->dir, DB_EXCL)) != 0)
		return (store_backup_fail(b, "copy", ret));
	return (0);
}

/* Step 3: the hash key, as <dir>/hash.key, mode 0600. */
static int
store_backup_key(struct store_backup *b)
{
	char	 buf[4096], *path;
	ssize_t	 n = 0;
	int	 in, out, rv = -1;

	if ((in = open(b->key_file, O_RDONLY | O_CLOEXEC)) == -1) {
		store_backup_why(b, "%s: %s", b->key_file, strerror(errno));
		return (-1);
	}
	xasprintf(&path, "%s/%s", b->dir, STORE_BACKUP_KEY);
	out = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
	    STORE_FILE_MODE);
	if (out != -1) {
		while ((n = read(in, buf, sizeof buf)) > 0 &&
		    write(out, buf, (size_t)n) == n)
			/* next */;
		if (n == 0 && fsync(out) == 0 && close(out) == 0)
			rv = 0;
		else if (n != -1)
			(void)close(out);
	}
	/* n is -1 only if the key could not be read. */
	if (rv != 0)
		store_backup_why(b, "%s: %s", n == -1 ? b->key_file : path,
		    strerror(errno));
	close(in);
	explicit_bzero(buf, sizeof buf);
	free(path);
	return (rv);
}

/*
 * Step 4: catastrophic recovery of the copy in an environment of its own,
 * with private regions so that no region file is left in it.
 */
static int
store_backup_recover(struct store_backup *b)
{
	DB_ENV		*env;
	u_int32_t	 flags;
	int		 ret;

	b->errmsg[0] = '\0';
	if ((ret = db_env_create(&env, 0)) != 0)
		return (store_backup_fail(b, "recovery", ret));
	env->app_private = b;
	env->set_errcall(env, store_backup_errcall_cb);
	flags = DB_CREATE | DB_INIT_TXN | DB_INIT_LOCK | DB_INIT_LOG |
	    DB_INIT_MPOOL | DB_PRIVATE | DB_RECOVER_FATAL;
	if ((ret = store_env_config(env, STORE_BACKUP_CACHE)) != 0 ||
	    (ret = env->open(env, b->dir, flags, STORE_FILE_MODE)) != 0 ||
	    (ret = env->txn_checkpoint(env, 0, 0, DB_FORCE)) != 0 ||
	    (ret = env->log_archive(env, NULL, DB_ARCH_REMOVE)) != 0) {
		(void)env->close(env, 0);
		return (store_backup_fail(b, "recovery", ret));
	}
	if ((ret = env->close(env, 0)) != 0)
		return (store_backup_fail(b, "recovery", ret));
	return (0);
}

/* Step 5: every file and the directory on disk; count them. */
static int
store_backup_sync(struct store_backup *b)
{
	struct dirent	*de;
	struct stat	 sb;
	DIR		*d;
	int		 fd, dfd, rv = 0;

	if ((d = opendir(b->dir)) == NULL) {
		store_backup_why(b, "%s: %s", b->dir, strerror(errno));
		return (-1);
	}
	dfd = dirfd(d);
	while (rv == 0 && (de = readdir(d)) != NULL) {
		if (strcmp(de->d_name, ".") == 0 ||
		    strcmp(de->d_name, "..") == 0)
			continue;
		fd = openat(dfd, de->d_name, O_RDONLY | O_NOFOLLOW |
		    O_CLOEXEC);
		if (fd == -1 || fstat(fd, &sb) != 0 || fsync(fd) != 0) {
			store_backup_why(b, "%s/%s: %s", b->dir, de->d_name,
			    strerror(errno));
			rv = -1;
		} else {
			b->res.files++;
			b->res.bytes += (unsigned long long)sb.st_size;
		}
		if (fd != -1)
			close(fd);
	}
	if (rv == 0 && fsync(dfd) != 0) {
		store_backup_why(b, "%s: %s", b->dir, strerror(errno));
		rv = -1;
	}
	closedir(d);
	return (rv);
}

/* Say which step failed and why (Berkeley DB's message if it gave one). */
static int
store_backup_fail(struct store_backup *b, const char *what, int ret)
{
	store_backup_why(b, "%s: %s", what,
	    b->errmsg[0] != '\0' ? b->errmsg : db_strerror(ret));
	return (-1);
}

/* Say why the backup failed, in the result's cause. */
static void
store_backup_why(struct store_backup *b, const char *fmt, ...)
{
	va_list	ap;

	va_start(ap, fmt);
	vsnprintf(b->res.cause, sizeof b->res.cause, fmt, ap);
	va_end(ap);
}

/* Keep Berkeley DB's message for the answer: the thread does not log. */
static void
store_backup_errcall_cb(const DB_ENV *env, const char *prefix,
    const char *msg)
{
	struct store_backup	*b = env->app_private;

	(void)prefix;
	snprintf(b->errmsg, sizeof b->errmsg, "%s", msg);
}

/* The thread is done: free it, then tell the caller. */
static void
store_backup_cb(evutil_socket_t fd, short events, void *arg)
{
	struct store_backup		*b = arg;
	struct store_backup_result	 res;
	void				(*done)(const struct
					    store_backup_result *, void *);
	void				*done_arg;
	char				 c;

	(void)events;
	/*
	 * Take the thread's byte before reading what it wrote: the read
	 * is what orders its writes to b->res before ours (that the pipe
	 * polled readable does not, for ThreadSanitizer).
	 */
	while (read(fd, &c, 1) == -1 && errno == EINTR)
		/* again */;
	res = b->res;
	done = b->done;
	done_arg = b->arg;
	b->st->backup = NULL;
	store_backup_free(b);
	done(&res, done_arg);
}

/* The store closes: wait for a backup in progress and log how it ended. */
void
store_backup_stop(struct store *st)
{
	if (st->backup == NULL)
		return;
	log_info("store: waiting for the backup in progress");
	if (st->backup->started)
		pthread_join(st->backup->thread, NULL);
	st->backup->started = 0;
	if (st->backup->res.ok)
		log_info("store: backup to %s done (not answered: stopping)",
		    st->backup->dir);
	else
		log_warnx("store: backup to %s failed: %s", st->backup->dir,
		    st->backup->res.cause);
	store_backup_free(st->backup);
	st->backup = NULL;
}
