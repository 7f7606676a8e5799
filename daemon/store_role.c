/*
 * A group's role changes, off the event loop (main.c, repl.c).
 *
 * Each role change closes the store's databases and opens them again for
 * the new role.  DB->close and DB->open that meet repmgr's lockout of the
 * API (a role change, a replica synchronising with a new master) sleep
 * 5 s in Berkeley DB 5.3 before they go on: on the loop, that stopped
 * every answer, the status socket's and /healthz's too.  Two threads do
 * that work instead:
 *
 *   the closer closes the handles handed over to it (store_close_dbs, on
 *   the loop or on the opener), in order;
 *
 *   the opener runs one opening at a time (store_open_async: the caller's
 *   function, store_repl_open and what goes with it), then tells the loop
 *   through a pipe, where the caller's done function runs.
 *
 * From store_open_async until done runs, the databases are the opener's:
 * the store is not ready, and a transaction begun on any other thread
 * fails as it does while the store is closed (requests are answered 503).
 * The loop hands nothing over meanwhile: main.c keeps a role change that
 * comes during an opening for when it is done.  The opener's own
 * transactions use the store's handles (store_thread_enter), and the
 * handles pass between it and the loop under the opener's mutex.
 */
#include "config.h"

#include <sys/types.h>

#include <db.h>
#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "phoneclaimd.h"
#include "store_int.h"
#include "xmalloc.h"

/* Handles handed over to the closer. */
struct store_closing {
	DB			*db[STORE_DB_COUNT];
	db_mutex_t		 mu[STORE_DB_COUNT];
	struct store_closing	*next;
};

struct store_closer {
	pthread_t		 thread;
	pthread_mutex_t		 mu;
	pthread_cond_t		 cv;
	struct store_closing	*head;
	struct store_closing	**tail;
	int			 quit;
	struct store		*st;
};

struct store_opener {
	pthread_t		 thread;
	pthread_mutex_t		 mu;
	pthread_cond_t		 cv;
	void			(*work)(void *);	/* on the opener */
	void			(*done)(void *);	/* then on the loop */
	void			*arg;
	int			 asked;		/* under mu */
	int			 finished;	/* under mu */
	int			 quit;		/* under mu */
	int			 busy;		/* the loop's: asked, not done */
	int			 fds[2];
	struct event		*ev;
};

/* Set on the opener thread: the store's handles are its own. */
static _Thread_local int store_opener_self;

static int	store_closer_start(struct store *);
static void	*store_closer_main(void *);
static void	*store_opener_main(void *);
static void	store_opener_cb(evutil_socket_t, short, void *);
static void	store_opener_free(struct store_opener *);

/*
 * Start the closer and the opener of a group's store, their answers
 * arriving on base.  0, or -1 and *cause.
 */
int
store_role_start(struct store *st, struct event_base *base, char **cause)
{
	struct store_opener	*o;
	int			 ret;

	if (store_closer_start(st) != 0) {
		xasprintf(cause, "cannot start the store's closer thread");
		return (-1);
	}
	o = xcalloc(1, sizeof *o);
	o->fds[0] = o->fds[1] = -1;
	pthread_mutex_init(&o->mu, NULL);
	pthread_cond_init(&o->cv, NULL);
	if (pipe2(o->fds, O_CLOEXEC | O_NONBLOCK) == -1) {
		xasprintf(cause, "opener: pipe: %s", strerror(errno));
		goto fail;
	}
	if ((o->ev = event_new(base, o->fds[0], EV_READ | EV_PERSIST,
	    store_opener_cb, st)) == NULL || event_add(o->ev, NULL) != 0) {
		xasprintf(cause, "opener: cannot watch its pipe");
		goto fail;
	}
	if ((ret = worker_thread(&o->thread, store_opener_main, o)) != 0) {
		xasprintf(cause, "opener: pthread_create: %s", strerror(ret));
		goto fail;
	}
	st->opener = o;
	return (0);

fail:
	store_opener_free(o);
	store_closer_stop(st);
	return (-1);
}

/* Start the closer thread. */
static int
store_closer_start(struct store *st)
{
	struct store_closer	*c;

	c = xcalloc(1, sizeof *c);
	c->st = st;
	c->tail = &c->head;
	pthread_mutex_init(&c->mu, NULL);
	pthread_cond_init(&c->cv, NULL);
	if (worker_thread(&c->thread, store_closer_main, c) != 0) {
		pthread_cond_destroy(&c->cv);
		pthread_mutex_destroy(&c->mu);
		free(c);
		return (-1);
	}
	st->closer = c;
	return (0);
}

/*
 * Hand the store's handles to the closer (from the loop, or from the
 * opener while it opens); -1 if there is none (the caller closes them).
 */
int
store_closer_hand(struct store *st)
{
	struct store_closer	*c = st->closer;
	struct store_closing	*h;
	int			 i, any = 0;

	if (c == NULL || st->failed)
		return (-1);
	h = xcalloc(1, sizeof *h);
	for (i = 0; i < STORE_DB_COUNT; i++) {
		h->db[i] = st->db[i];
		h->mu[i] = st->db_mutex[i];
		any |= st->db[i] != NULL;
		st->db[i] = NULL;
		st->db_mutex[i] = 0;
	}
	if (!any) {
		free(h);
		return (0);
	}
	pthread_mutex_lock(&c->mu);
	*c->tail = h;
	c->tail = &h->next;
	pthread_cond_signal(&c->cv);
	pthread_mutex_unlock(&c->mu);
	return (0);
}

/* The closer thread: close what was handed over, until told to quit. */
static void *
store_closer_main(void *arg)
{
	struct store_closer	*c = arg;
	struct store_closing	*h;

	pthread_mutex_lock(&c->mu);
	for (;;) {
		while (c->head == NULL && !c->quit)
			pthread_cond_wait(&c->cv, &c->mu);
		if ((h = c->head) == NULL)
			break;
		if ((c->head = h->next) == NULL)
			c->tail = &c->head;
		pthread_mutex_unlock(&c->mu);
		/* A panicked environment frees nothing. */
		if (!c->st->failed)
			store_handles_close(h->db, h->mu);
		free(h);
		pthread_mutex_lock(&c->mu);
	}
	pthread_mutex_unlock(&c->mu);
	return (NULL);
}

/* Stop the closer thread once it has closed everything handed over. */
void
store_closer_stop(struct store *st)
{
	struct store_closer	*c = st->closer;

	if (c == NULL)
		return;
	pthread_mutex_lock(&c->mu);
	c->quit = 1;
	pthread_cond_signal(&c->cv);
	pthread_mutex_unlock(&c->mu);
	pthread_join(c->thread, NULL);
	pthread_cond_destroy(&c->cv);
	pthread_mutex_destroy(&c->mu);
	free(c);
	st->closer = NULL;
}

/*
 * Run work(arg) on the opener, then done(arg) on the loop; the store is
 * not ready in between.  One at a time: -1 if there is no opener or an
 * opening is in flight.
 */
int
store_open_async(struct store *st, void (*work)(void *),
    void (*done)(void *), void *arg)
{
	struct store_opener	*o = st->opener;

	if (o == NULL || o->busy || st->failed)
		return (-1);
	o->busy = 1;
	atomic_store(&st->opening, 1);
	pthread_mutex_lock(&o->mu);
	o->work = work;
	o->done = done;
	o->arg = arg;
	o->asked = 1;
	pthread_cond_signal(&o->cv);
	pthread_mutex_unlock(&o->mu);
	return (0);
}

/* The opener thread: run each opening asked for, tell the loop. */
static void *
store_opener_main(void *arg)
{
	struct store_opener	*o = arg;
	void			(*work)(void *);
	void			*warg;

	store_opener_self = 1;
	pthread_mutex_lock(&o->mu);
	for (;;) {
		while (!o->asked && !o->quit)
			pthread_cond_wait(&o->cv, &o->mu);
		/* An opening not begun yet is dropped at the stop. */
		if (o->quit)
			break;
		o->asked = 0;
		work = o->work;
		warg = o->arg;
		pthread_mutex_unlock(&o->mu);
		work(warg);
		pthread_mutex_lock(&o->mu);
		o->finished = 1;
		while (write(o->fds[1], "o", 1) == -1 && errno == EINTR)
			/* again */;
	}
	pthread_mutex_unlock(&o->mu);
	return (NULL);
}

/* The opener is done: its handles are the loop's again. */
static void
store_opener_cb(evutil_socket_t fd, short events, void *arg)
{
	struct store		*st = arg;
	struct store_opener	*o = st->opener;
	char			 buf[16];
	int			 finished;

	(void)events;
	while (read(fd, buf, sizeof buf) > 0)
		/* drain */;
	pthread_mutex_lock(&o->mu);
	finished = o->finished;
	o->finished = 0;
	pthread_mutex_unlock(&o->mu);
	if (!finished || !o->busy)
		return;
	o->busy = 0;
	atomic_store(&st->opening, 0);
	o->done(o->arg);
}

/*
 * Stop the opener: an opening in flight ends first, one not begun is
 * dropped, and done is not called.  The handles are then the caller's.
 */
void
store_opener_stop(struct store *st)
{
	struct store_opener	*o = st->opener;

	if (o == NULL)
		return;
	pthread_mutex_lock(&o->mu);
	o->quit = 1;
	pthread_cond_signal(&o->cv);
	pthread_mutex_unlock(&o->mu);
	pthread_join(o->thread, NULL);
	store_opener_free(o);
	st->opener = NULL;
	atomic_store(&st->opening, 0);
}

/* Free an opener whose thread is not running. */
static void
store_opener_free(struct store_opener *o)
{
	if (o->ev != NULL)
		event_free(o->ev);
	if (o->fds[0] != -1)
		close(o->fds[0]);
	if (o->fds[1] != -1)
		close(o->fds[1]);
	pthread_cond_destroy(&o->cv);
	pthread_mutex_destroy(&o->mu);
	free(o);
}

/*
 * Return 1 if the calling thread may use the store's databases: the
 * opener while it opens them, any other thread while no opening is in
 * flight.
 */
int
store_dbs_mine(struct store *st)
{
	return (store_opener_self || !atomic_load(&st->opening));
}

/* Return 1 on the opener thread. */
int
store_on_opener(void)
{
	return (store_opener_self);
}
