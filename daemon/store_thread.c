/*
 * Database handles for the threads that run claim transactions besides the
 * event loop (threads > 1: the workers of api.c).
 *
 * The environment is then free-threaded (DB_THREAD), but a database
 * handle opened in it would be free-threaded too, which makes every read
 * need an allocated DBT; the store's reads use the handle's own memory.
 * So, as under replication, each handle stays on one thread: the loop
 * keeps st->db, and every other thread that begins a transaction takes a
 * set of its own on first use (store_thread_enter), which store_db
 * returns from then on.  Berkeley DB's locks are shared by all handles of
 * the environment, so transactions of different threads see each other as
 * they would in one thread, and a deadlock between them is broken by the
 * lock detector (set_lk_detect) and retried by claims_run.
 *
 * The sets are opened when the store opens, before any other thread runs
 * a transaction (store_threads_prepare), never while one does.  A handle
 * is made single-threaded by taking its mutex away (store_unthread) just
 * after DB->open returns, but DB->open has already put the handle on the
 * environment's list of handles, and a write on another thread walks the
 * cursors of every handle of the same file, locking and then unlocking
 * each handle's mutex.  A walk that locked the mutex just before it was
 * taken away found none to unlock: the mutex stayed locked by that
 * thread, and it is also the mutex of the handle's log file name, which
 * the handle's thread locks to commit.  That commit then waited forever,
 * holding its page locks, and every other claim waited on those (no lock
 * cycle for the detector to see).  Opening the sets while no other
 * thread can write closes that window: a handle's mutex changes only
 * when its set is opened and when it is closed, with the threads stopped.
 *
 * Sets are kept in a list so that store_close can close them once the
 * threads are stopped (http_free stops them before the store closes).
 */
#include "config.h"

#include <sys/types.h>
#include <sys/queue.h>

#include <db.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "phoneclaimd.h"
#include "store_int.h"
#include "xmalloc.h"

struct store_thread {
	struct store			*st;
	DB				*db[STORE_DB_COUNT];
	db_mutex_t			 mu[STORE_DB_COUNT];
	int				 taken;	/* by a thread */
	LIST_ENTRY(store_thread)	 entry;
};
LIST_HEAD(store_threads, store_thread);

static pthread_mutex_t		 store_thread_mu = PTHREAD_MUTEX_INITIALIZER;
static struct store_threads	 store_thread_list =
				    LIST_HEAD_INITIALIZER(store_thread_list);
/* Changed by every close: a set of an earlier generation is gone. */
static atomic_ulong		 store_thread_gen;
static _Thread_local struct store_thread *store_thread_self;
static _Thread_local unsigned long store_thread_self_gen;

static struct store_thread *store_thread_mine(struct store *);

/* The calling thread's set on st, or NULL (the loop, or none yet). */
static struct store_thread *
store_thread_mine(struct store *st)
{
	struct store_thread	*t = store_thread_self;

	/* The generation first: a set of an earlier one is freed. */
	if (t != NULL && store_thread_self_gen != atomic_load(
	    &store_thread_gen))
		t = store_thread_self = NULL;
	return (t != NULL && t->st == st ? t : NULL);
}

/* The handle of database which for the calling thread. */
DB *
store_db(struct store *st, enum store_db which)
{
	struct store_thread	*t = store_thread_self;

	/*
	 * Only this thread sets or clears its pointer, and each transaction
	 * begins with store_thread_enter, which drops a stale one.
	 */
	if (t != NULL && t->st == st)
		return (t->db[which]);
	return (st->db[which]);
}

/*
 * When the store opens, before any thread but the opening one can begin
 * a transaction: open n sets of handles for the threads to come.  0, or
 * -1 and *cause.
 */
int
store_threads_prepare(struct store *st, int n, char **cause)
{
	struct store_thread	*t;
	int			 i, ret;

	for (i = 0; i < n; i++) {
		t = xcalloc(1, sizeof *t);
		t->st = st;
		if ((ret = store_handles_open(st, t->db, t->mu)) != 0) {
			xasprintf(cause, "cannot open the handles of claim "
			    "thread %d in %s: %s", i + 1, st->dir,
			    db_strerror(ret));
			store_handles_close(t->db, t->mu);
			free(t);
			return (-1);
		}
		pthread_mutex_lock(&store_thread_mu);
		LIST_INSERT_HEAD(&store_thread_list, t, entry);
		pthread_mutex_unlock(&store_thread_mu);
	}
	log_debug("store: %d sets of handles for the claim threads", n);
	return (0);
}

/*
 * Before a transaction: on a thread other than the one that opened the
 * store, make sure the thread has handles of its own, taking one of the
 * sets opened with the store.  0, or -1 (logged) if none is left: more
 * threads than the store was opened for.
 */
int
store_thread_enter(struct store *st)
{
	struct store_thread	*t;

	/* The opener opens the store's own handles (store_role.c). */
	if (pthread_equal(pthread_self(), st->loop) || store_on_opener() ||
	    store_thread_mine(st) != NULL)
		return (0);
	pthread_mutex_lock(&store_thread_mu);
	LIST_FOREACH(t, &store_thread_list, entry)
		if (t->st == st && !t->taken)
			break;
	if (t != NULL) {
		t->taken = 1;
		store_thread_self_gen = atomic_load(&store_thread_gen);
	}
	pthread_mutex_unlock(&store_thread_mu);
	if (t == NULL) {
		log_warnx("store: no database handles left for another "
		    "thread (more threads than the store was opened for)");
		return (-1);
	}
	store_thread_self = t;
	log_debug("store: a claim thread took its handles");
	return (0);
}

/*
 * Close every thread's set on st (its threads are stopped, or the store
 * failed: then the handles are only forgotten, as store_close_dbs does).
 */
void
store_threads_close(struct store *st)
{
	struct store_thread	*t, *next;

	pthread_mutex_lock(&store_thread_mu);
	atomic_fetch_add(&store_thread_gen, 1);
	for (t = LIST_FIRST(&store_thread_list); t != NULL; t = next) {
		next = LIST_NEXT(t, entry);
		if (t->st != st)
			continue;
		LIST_REMOVE(t, entry);
		if (!st->failed)
			store_handles_close(t->db, t->mu);
		free(t);
	}
	pthread_mutex_unlock(&store_thread_mu);
}
