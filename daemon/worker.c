/*
 * Worker threads for CPU work that needs nothing of the event loop: the
 * loop hands over a job (work, done, arg), a thread runs work(arg), and
 * the loop runs done(arg, 0) when the thread is through.  With one thread
 * (threads = 1) it lets a second core parse phone numbers
 * (libphonenumber's ~20 microseconds each) while the loop does HTTP and
 * the store; with more, each thread also runs the claim transactions
 * (api.c), on store handles of its own (store_thread.c).  The threads
 * take jobs from one queue, so the jobs of one connection, which evhttp
 * hands over one at a time, still run in order.
 *
 * Jobs go in through a queue under a mutex and come back through another.
 * Both ways are batched, since waking a thread costs a system call: the
 * jobs of one loop iteration are handed over together at its end (kick_ev)
 * with one signal, and the thread writes one byte to a pipe only when the
 * way back was empty, so a busy loop gets one wake-up for many jobs.  work() must not touch the
 * loop, the store or anything else the loop owns.
 */
#include "config.h"

#include <sys/types.h>
#include <sys/queue.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>

#include "log.h"
#include "phoneclaimd.h"
#include "xmalloc.h"

struct worker_job {
	void			(*work)(void *);
	void			(*done)(void *, int);
	void			*arg;
	TAILQ_ENTRY(worker_job)	 entry;
};
TAILQ_HEAD(worker_jobs, worker_job);

struct worker {
	pthread_t		*threads;
	int			 nthreads;	/* started */
	pthread_mutex_t		 mu;
	pthread_cond_t		 cv;
	struct worker_jobs	 in;		/* under mu */
	struct worker_jobs	 out;		/* under mu */
	int			 quit;		/* under mu */
	struct worker_jobs	 local;		/* this iteration's, loop only */
	size_t			 nlocal;
	size_t			 queued;	/* submitted, not done */
	int			 fds[2];
	struct event		*ev;
	struct event		*kick_ev;	/* hands local over */
};

static void	*worker_main(void *);
static void	 worker_cb(evutil_socket_t, short, void *);
static void	 worker_kick_cb(evutil_socket_t, short, void *);
static void	 worker_free(struct worker *);
static void	 worker_join(struct worker *);

/*
 * Start a thread that takes no signal (they are the event loop's); an
 * errno value, or 0.
 */
int
worker_thread(pthread_t *thread, void *(*fn)(void *), void *arg)
{
	sigset_t	all, old;
	int		ret;

	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	ret = pthread_create(thread, NULL, fn, arg);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	return (ret);
}

/*
 * Start n worker threads that take jobs from one queue; their jobs finish
 * on base.
 */
struct worker *
worker_start(struct event_base *base, int n, char **cause)
{
	struct worker	*w;
	int		 ret;

	w = xcalloc(1, sizeof *w);
	w->threads = xcalloc((size_t)n, sizeof *w->threads);
	TAILQ_INIT(&w->in);
	TAILQ_INIT(&w->out);
	TAILQ_INIT(&w->local);
	if (pipe2(w->fds, O_CLOEXEC | O_NONBLOCK) == -1) {
		xasprintf(cause, "worker: pipe: %s", strerror(errno));
		free(w);
		return (NULL);
	}
	if ((w->ev = event_new(base, w->fds[0], EV_READ | EV_PERSIST,
	    worker_cb, w)) == NULL || event_add(w->ev, NULL) != 0 ||
	    (w->kick_ev = event_new(base, -1, 0, worker_kick_cb, w)) == NULL)
		fatalx("worker: event_new");
	pthread_mutex_init(&w->mu, NULL);
	pthread_cond_init(&w->cv, NULL);
	for (; w->nthreads < n; w->nthreads++) {
		ret = worker_thread(&w->threads[w->nthreads], worker_main, w);
		if (ret == 0)
			continue;
		xasprintf(cause, "worker: pthread_create: %s", strerror(ret));
		worker_join(w);
		worker_free(w);
		return (NULL);
	}
	return (w);
}

/* Free a worker whose thread is not running. */
static void
worker_free(struct worker *w)
{
	event_free(w->ev);
	event_free(w->kick_ev);
	close(w->fds[0]);
	close(w->fds[1]);
	pthread_cond_destroy(&w->cv);
	pthread_mutex_destroy(&w->mu);
	free(w->threads);
	free(w);
}

/* Stop the threads after the job each is running, and wait for them. */
static void
worker_join(struct worker *w)
{
	int	i;

	pthread_mutex_lock(&w->mu);
	w->quit = 1;
	pthread_cond_broadcast(&w->cv);
	pthread_mutex_unlock(&w->mu);
	for (i = 0; i < w->nthreads; i++)
		pthread_join(w->threads[i], NULL);
}

/*
 * Stop the thread after the job it is running; every job not done is
 * given back with done(arg, 1): cancelled, work may not have run.
 */
void
worker_stop(struct worker *w)
{
	struct worker_job	*j;

	if (w == NULL)
		return;
	worker_join(w);
	TAILQ_CONCAT(&w->out, &w->in, entry);
	TAILQ_CONCAT(&w->out, &w->local, entry);
	while ((j = TAILQ_FIRST(&w->out)) != NULL) {
		TAILQ_REMOVE(&w->out, j, entry);
		j->done(j->arg, 1);
		free(j);
	}
	worker_free(w);
}

/* Hand a job over: work(arg) on the thread, then done(arg, 0) here. */
void
worker_submit(struct worker *w, void (*work)(void *),
    void (*done)(void *, int), void *arg)
{
	struct worker_job	*j;

	j = xcalloc(1, sizeof *j);
	j->work = work;
	j->done = done;
	j->arg = arg;
	w->queued++;
	if (TAILQ_EMPTY(&w->local))
		event_active(w->kick_ev, EV_TIMEOUT, 0);
	TAILQ_INSERT_TAIL(&w->local, j, entry);
	w->nlocal++;
}

/* The end of a loop iteration: hand its jobs over, with one signal. */
static void
worker_kick_cb(evutil_socket_t fd, short events, void *arg)
{
	struct worker	*w = arg;

	(void)fd;
	(void)events;
	if (TAILQ_EMPTY(&w->local))
		return;
	pthread_mutex_lock(&w->mu);
	TAILQ_CONCAT(&w->in, &w->local, entry);
	pthread_mutex_unlock(&w->mu);
	/*
	 * One thread for one job; all of them for more.  After the unlock,
	 * so that a woken thread finds the mutex free (the jobs are queued
	 * under it: no thread misses them).
	 */
	if (w->nlocal > 1 && w->nthreads > 1)
		pthread_cond_broadcast(&w->cv);
	else
		pthread_cond_signal(&w->cv);
	w->nlocal = 0;
}

/* How many jobs are handed over and not done. */
size_t
worker_queued(struct worker *w)
{
	return (w != NULL ? w->queued : 0);
}

/* The thread: take a job, run it, put it on the way back. */
static void *
worker_main(void *arg)
{
	struct worker		*w = arg;
	struct worker_job	*j;
	int			 wake;
	char			 c = 0;

	pthread_mutex_lock(&w->mu);
	for (;;) {
		while (TAILQ_EMPTY(&w->in) && !w->quit)
			pthread_cond_wait(&w->cv, &w->mu);
		if (w->quit)
			break;
		j = TAILQ_FIRST(&w->in);
		TAILQ_REMOVE(&w->in, j, entry);
		pthread_mutex_unlock(&w->mu);
		j->work(j->arg);
		pthread_mutex_lock(&w->mu);
		wake = TAILQ_EMPTY(&w->out);
		TAILQ_INSERT_TAIL(&w->out, j, entry);
		if (wake) {
			/* A full pipe already says "look": nothing lost. */
			while (write(w->fds[1], &c, 1) == -1 && errno == EINTR)
				/* again */;
		}
	}
	pthread_mutex_unlock(&w->mu);
	return (NULL);
}

/* On the loop: take the finished jobs and run their done callbacks. */
static void
worker_cb(evutil_socket_t fd, short events, void *arg)
{
	struct worker		*w = arg;
	struct worker_jobs	 done;
	struct worker_job	*j;
	char			 buf[64];

	(void)events;
	while (read(fd, buf, sizeof buf) > 0)
		/* drain */;
	TAILQ_INIT(&done);
	pthread_mutex_lock(&w->mu);
	TAILQ_CONCAT(&done, &w->out, entry);
	pthread_mutex_unlock(&w->mu);
	while ((j = TAILQ_FIRST(&done)) != NULL) {
		TAILQ_REMOVE(&done, j, entry);
		w->queued--;
		j->done(j->arg, 0);
		free(j);
	}
}
