/*
 * Unit tests for worker.c: jobs run on the thread and finish on the loop,
 * each exactly once, and stopping gives back what was not finished.
 */
#include "config.h"

#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <event2/event.h>

#include "log.h"
#include "phoneclaimd.h"

#define JOBS	500

struct job {
	int		 n;
	long		 square;	/* written by work */
	pthread_t	 worker;	/* the thread work ran on */
	int		 done;		/* done calls */
	int		 cancelled;
};

static struct event_base	*base;
static size_t			 finished;

static void
work(void *arg)
{
	struct job	*j = arg;

	j->square = (long)j->n * j->n;
	j->worker = pthread_self();
}

static void
done(void *arg, int cancelled)
{
	struct job	*j = arg;

	j->done++;
	j->cancelled = cancelled;
	if (++finished == JOBS)
		event_base_loopbreak(base);
}

/*
 * Every job runs on another thread and finishes here once, with one
 * thread or a pool of them.
 */
static void
run_jobs(int nthreads)
{
	struct worker	*w;
	struct job	*jobs;
	char		*cause = NULL;
	int		 i;

	base = event_base_new();
	assert_non_null(base);
	w = worker_start(base, nthreads, &cause);
	assert_non_null(w);
	jobs = calloc(JOBS, sizeof *jobs);
	finished = 0;
	for (i = 0; i < JOBS; i++) {
		jobs[i].n = i;
		worker_submit(w, work, done, &jobs[i]);
	}
	assert_true(worker_queued(w) == JOBS);
	assert_int_equal(event_base_dispatch(base), 0);
	assert_true(finished == JOBS);
	assert_true(worker_queued(w) == 0);
	for (i = 0; i < JOBS; i++) {
		assert_int_equal(jobs[i].done, 1);
		assert_int_equal(jobs[i].cancelled, 0);
		assert_true(jobs[i].square == (long)i * i);
		assert_false(pthread_equal(jobs[i].worker, pthread_self()));
	}
	/* Stopped with jobs not finished on the loop: given back. */
	finished = 0;
	for (i = 0; i < 20; i++) {
		memset(&jobs[i], 0, sizeof jobs[i]);
		worker_submit(w, work, done, &jobs[i]);
	}
	worker_stop(w);
	for (i = 0; i < 20; i++) {
		assert_int_equal(jobs[i].done, 1);
		assert_int_equal(jobs[i].cancelled, 1);
	}
	free(jobs);
	event_base_free(base);
}

static void
test_jobs(void **state)
{
	(void)state;
	run_jobs(1);
}

static void
test_jobs_pool(void **state)
{
	(void)state;
	run_jobs(4);
}

int
main(void)
{
	const struct CMUnitTest	tests[] = {
		cmocka_unit_test(test_jobs),
		cmocka_unit_test(test_jobs_pool),
	};

	log_init(1, LOG_LEVEL_ERROR);
	return (cmocka_run_group_tests(tests, NULL, NULL));
}
