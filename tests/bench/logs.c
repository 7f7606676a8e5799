/*
 * The log stream of the benchmark: the generator of the batches of Auth0
 * log events that POST /v1/log-stream takes, and the phase that reserves
 * the claims those events are about and sends the batches.
 */

#include "config.h"

#include <sys/types.h>

#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench.h"

enum log_kind {
	LOG_ENROLL,
	LOG_UNENROLL,
	LOG_SDU,
	LOG_FAIL,
	LOG_IGNORED,
	LOG_REPEAT
};

struct log_span {
	size_t	 off;
	size_t	 len;
};

/* The state of the log-stream generator. */
struct log_gen {
	char		*buf;		/* the batch being made */
	size_t		 len;
	size_t		 cap;
	const char	*prevbody;	/* the previous batch */
	struct log_span	*prev;		/* its items */
	size_t		 nprev;
	struct log_span	*cur;		/* the items made so far */
	size_t		 ncur;
	struct claim	*res;		/* claims reserved for the stream */
	size_t		 nres;
	size_t		 nextres;
	size_t		*enrolled;	/* enrolled and not yet released */
	size_t		 nenrolled;
};

/* Event types the daemon ignores, as they come in a tenant's stream. */
static const struct ignored_type {
	const char	*type;
	const char	*description;
} ignored_types[] = {
	{ "s", "Success Login" },
	{ "f", "Wrong email or password." },
	{ "seacft", "Authorization Code for Access Token" },
	{ "gd_send_sms", "Guardian - Second factor sms sent" },
	{ "gd_auth_succeed", "Guardian - Second factor authentication "
	  "succeeded" },
};
#define NIGNORED (sizeof ignored_types / sizeof ignored_types[0])

static void	 log_item(struct bench *, struct log_gen *, const char *,
		    const char *, const struct claim *, const char *);
static void	 log_make_batches(struct bench *, struct claim *, size_t);
static void	 log_one(struct bench *, struct log_gen *, int);

static uint64_t			 log_date_ms;	/* log event dates, ms */

/*
 * Append one log-stream item: type, its user and, for the Guardian
 * events, the claim it is about (number in full or masked).
 */
static void
log_item(struct bench *b, struct log_gen *g, const char *type,
    const char *user, const struct claim *cl, const char *number)
{
	uint64_t	 id = b->next_log++;
	const char	*descr = "";
	size_t		 i;
	char		 logid[128], date[80], det[640];
	struct tm	 tm;
	time_t		 sec = log_date_ms / 1000;

	for (i = 0; i < NIGNORED; i++)
		if (strcmp(type, ignored_types[i].type) == 0)
			descr = ignored_types[i].description;
	gmtime_r(&sec, &tm);
	snprintf(date, sizeof date, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ",
	    tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
	    tm.tm_min, tm.tm_sec, (int)(log_date_ms % 1000));
	log_date_ms++;
	snprintf(logid, sizeof logid, "900%04d%02d%02d%02d%02d%02d%08lu%031"
	    PRIu64, tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
	    tm.tm_min, tm.tm_sec, b->rundigits, id);
	if (strcmp(type, "gd_enrollment_complete") == 0)
		snprintf(det, sizeof det, "\"description\":\"Guardian - "
		    "Enrollment complete (sms)\",\"details\":{\"authenticator"
		    "\":{\"id\":\"phone|%s\",\"type\":\"phone\",\"phone_number"
		    "\":\"%s\"},\"enrollment\":{\"_id\":\"%s\",\"tenant\":"
		    "\"phoneclaimd-bench\",\"user_id\":\"%s\",\"phone_number\":"
		    "\"%s\",\"name\":\"Phone\",\"identifier\":\"%s\"}}",
		    cl->device, number, cl->device, user, number, cl->device);
	else if (strcmp(type, "gd_unenroll") == 0)
		snprintf(det, sizeof det, "\"description\":\"Guardian - "
		    "Unenroll device account (sms)\",\"details\":{"
		    "\"authenticator\":{\"id\":\"sms|%s\",\"type\":\"sms\","
		    "\"phone_number\":\"%s\"},\"enrollment\":{\"_id\":\"%s\","
		    "\"user_id\":\"%s\",\"phone_number\":\"%s\"}}", cl->device,
		    number, cl->device, user, number);
	else if (strcmp(type, "gd_send_sms_failure") == 0)
		snprintf(det, sizeof det, "\"description\":\"Guardian - Error "
		    "on send-phone-message-hook: 60204 Custom code not "
		    "allowed\",\"details\":{\"request\":{\"method\":\"POST\","
		    "\"path\":\"/api/sms/configs/cfg_bench/authenticators/"
		    "phone|%s/challenge\",\"query\":{},\"body\":{\"client_id\":"
		    "\"Bench0Client0Id0Written0For0Bench\",\"render_locale\":"
		    "\"en\"},\"auth\":{\"strategy\":\"jwt_api2_internal_token_"
		    "with_tenant\",\"scopes\":[\"enroll\"]}},\"response\":{},"
		    "\"enrollment\":{},\"failure_details\":{\"errorCode\":"
		    "60204,"
		    "\"message\":\"Custom code not allowed\"},\"actions\":{"
		    "\"executions\":[\"bench-0000\"]}}", cl->device);
	else if (strcmp(type, "sdu") == 0)
		snprintf(det, sizeof det, "\"description\":\"Deleted User\","
		    "\"details\":{},\"connection\":\"Username-Password-"
		    "Authentication\",\"strategy\":\"auth0\",\"strategy_type\":"
		    "\"database\"");
	else
		snprintf(det, sizeof det, "\"description\":\"%s\","
		    "\"details\":{\"prompts\":[],\"initiatedAt\":%" PRIu64 ","
		    "\"completedAt\":%" PRIu64 ",\"elapsedTime\":1000},"
		    "\"connection\":\"Username-Password-Authentication\","
		    "\"strategy\":\"auth0\",\"strategy_type\":\"database\"",
		    descr, log_date_ms - 1000, log_date_ms);
	buf_printf(&g->buf, &g->len, &g->cap, "{\"log_id\":\"%s\",\"data\":{"
	    "\"date\":\"%s\",\"type\":\"%s\",\"client_id\":"
	    "\"Bench0Client0Id0Written0For0Bench\",\"client_name\":"
	    "\"phoneclaimd bench\",\"ip\":"
	    "\"192.0.2.10\",\"user_agent\":\"Chrome 120.0.0 / Mac OS X "
	    "10.15.7\",\"hostname\":\"bench.example.com\",\"tenant_name\":"
	    "\"phoneclaimd-bench\",\"user_id\":\"%s\",\"user_name\":"
	    "\"enrolee@example.com\",%s,\"log_id\":\"%s\"}}", logid, date,
	    type, user, det, logid);
}

/*
 * Make the log-stream bodies.  Each batch holds exactly 40% enrolments
 * of claims reserved by the bench, 10% unenrolments of numbers enrolled
 * before (masked numbers, as Auth0 shows them), 10% user deletions (half
 * of enrolled users, half of users without a claim), 10% SMS failures of
 * reserved claims, 25% ignored types and 5% repeats of items of this or
 * the previous batch, in a random order.  An unenrolment or a repeat with
 * nothing before it to refer to becomes an ignored event.
 */
static void
log_make_batches(struct bench *b, struct claim *res, size_t nres)
{
	static const int	 counts[] = { 400, 100, 100, 100, 250, 50 };
	struct log_gen		 g;
	struct log_span		*tmp;
	int			 kinds[BENCH_BATCH], t;
	size_t			 i, j, k;

	memset(&g, 0, sizeof g);
	g.res = res;
	g.nres = nres;
	g.enrolled = xmalloc(nres * sizeof *g.enrolled);
	g.prev = xmalloc(BENCH_BATCH * sizeof *g.prev);
	g.cur = xmalloc(BENCH_BATCH * sizeof *g.cur);
	log_date_ms = (uint64_t)time(NULL) * 1000;
	b->bodies = xmalloc(b->batches * sizeof *b->bodies);
	b->bodylens = xmalloc(b->batches * sizeof *b->bodylens);
	for (i = 0; i < b->batches; i++) {
		for (k = 0, j = 0; k < sizeof counts / sizeof counts[0]; k++)
			for (t = 0; t < counts[k]; t++)
				kinds[j++] = (int)k;
		for (j = BENCH_BATCH - 1; j > 0; j--) {
			k = rng_next(b) % (j + 1);
			t = kinds[j];
			kinds[j] = kinds[k];
			kinds[k] = t;
		}
		g.cap = 1024 * BENCH_BATCH;
		g.buf = xmalloc(g.cap);
		g.len = 0;
		g.prevbody = i > 0 ? b->bodies[i - 1] : NULL;
		buf_printf(&g.buf, &g.len, &g.cap, "[");
		for (j = 0; j < BENCH_BATCH; j++) {
			if (j > 0)
				buf_printf(&g.buf, &g.len, &g.cap, ",\n");
			log_one(b, &g, kinds[j]);
		}
		buf_printf(&g.buf, &g.len, &g.cap, "]\n");
		b->bodies[i] = g.buf;
		b->bodylens[i] = g.len;
		tmp = g.prev;
		g.prev = g.cur;
		g.nprev = g.ncur;
		g.cur = tmp;
		g.ncur = 0;
	}
	free(g.prev);
	free(g.cur);
	free(g.enrolled);
}

/* Append one item of the given kind to the batch being made. */
static void
log_one(struct bench *b, struct log_gen *g, int kind)
{
	char		 user[32], masked[24];
	struct claim	*cl;
	size_t		 k, start = g->len;

	if ((kind == LOG_UNENROLL && g->nenrolled == 0) ||
	    (kind == LOG_REPEAT && g->nprev + g->ncur == 0) ||
	    ((kind == LOG_ENROLL || kind == LOG_FAIL) && g->nextres == g->nres))
		kind = LOG_IGNORED;
	switch (kind) {
	case LOG_REPEAT:
		/* The same text again, as a redelivery would send it. */
		k = rng_next(b) % (g->nprev + g->ncur);
		if (k < g->nprev)
			buf_printf(&g->buf, &g->len, &g->cap, "%.*s",
			    (int)g->prev[k].len, g->prevbody + g->prev[k].off);
		else {
			k -= g->nprev;
			buf_printf(&g->buf, &g->len, &g->cap, "%.*s",
			    (int)g->cur[k].len, g->buf + g->cur[k].off);
		}
		return;
	case LOG_ENROLL:
		cl = &g->res[g->nextres++];
		g->enrolled[g->nenrolled++] = cl - g->res;
		log_item(b, g, "gd_enrollment_complete", cl->user, cl,
		    cl->number);
		break;
	case LOG_UNENROLL:
		k = rng_next(b) % g->nenrolled;
		cl = &g->res[g->enrolled[k]];
		g->enrolled[k] = g->enrolled[--g->nenrolled];
		snprintf(masked, sizeof masked, "+1******%s",
		    cl->number + strlen(cl->number) - 4);
		log_item(b, g, "gd_unenroll", cl->user, cl, masked);
		break;
	case LOG_SDU:
		if (g->nenrolled > 0 && rng_next(b) % 2 == 0) {
			k = rng_next(b) % g->nenrolled;
			cl = &g->res[g->enrolled[k]];
			g->enrolled[k] = g->enrolled[--g->nenrolled];
			log_item(b, g, "sdu", cl->user, NULL, NULL);
			break;
		}
		make_user(b, user, sizeof user);
		log_item(b, g, "sdu", user, NULL, NULL);
		break;
	case LOG_FAIL:
		cl = &g->res[g->nextres++];
		log_item(b, g, "gd_send_sms_failure", cl->user, cl, NULL);
		break;
	default:
		make_user(b, user, sizeof user);
		log_item(b, g, ignored_types[rng_next(b) % NIGNORED].type,
		    user, NULL, NULL);
		break;
	}
	g->cur[g->ncur].off = start;
	g->cur[g->ncur].len = g->len - start;
	g->ncur++;
}

/* The log stream: reserve the claims its events are about, then send. */
int
bench_log_stream(struct bench *b)
{
	struct run	 run;
	size_t		 n;

	n = b->batches * 500;
	b->reserved = xmalloc(n * sizeof *b->reserved);
	memset(&run, 0, sizeof run);
	run.b = b;
	run.t = &b->daemon;
	run.name = "log-stream reservations";
	run.mode = RUN_FILL;
	run.nconns = 32;
	run.limit = n;
	run.sink = b->reserved;
	if (run_go(&run, NULL) != 0 || !daemon_alive(b))
		return (-1);
	log_make_batches(b, b->reserved, n);
	memset(&run, 0, sizeof run);
	run.b = b;
	run.t = &b->daemon;
	run.name = "log stream";
	run.mode = RUN_LOG;
	run.nconns = 1;
	run.limit = b->batches;
	if (run_go(&run, &b->ls) != 0 || !daemon_alive(b))
		return (-1);
	printf("\nlog stream: %zu batches of %d events in %.3f s: %.0f "
	    "events/s (batch p50 %.1f ms, p99 %.1f ms)\n", b->batches,
	    BENCH_BATCH, b->ls.seconds, b->ls.seconds > 0 ? b->ls.requests *
	    BENCH_BATCH / b->ls.seconds : 0, b->ls.p50, b->ls.p99);
	printf("log stream: %" PRIu64 " received, %" PRIu64 " applied, %"
	    PRIu64 " duplicates, %" PRIu64 " ignored, %" PRIu64 " rejected\n",
	    b->ls_received, b->ls_applied, b->ls_duplicates, b->ls_ignored,
	    b->ls_rejected);
	return (0);
}
