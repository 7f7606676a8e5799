/*
 * POST /v1/claims, called by the Auth0 Action, and GET /healthz.  Parses
 * and checks the request, then hands it to the claim rules.
 *
 * A number the cache does not know goes to the worker thread for
 * libphonenumber (as long as the claim transaction itself), and the claim
 * goes on when it comes back: the loop meanwhile serves other requests.
 * Requests of one connection stay in order, since evhttp reads the next
 * only after the answer.
 *
 * With threads > 1 (and no replication, whose commits wait for the
 * group on the loop: repl.c) the whole claim goes to the workers: the
 * number's parsing, its hash and the transaction, committed there without
 * a flush.  The answer comes back to the loop and is queued with
 * http_reply like any other, so it leaves only after the flush that
 * follows its commit (I2), and the answers that come back together share
 * that flush.  HTTP, JSON and the number cache stay on the loop.
 */
#include "config.h"

#include <sys/queue.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <yajl/yajl_tree.h>

#include "log.h"
#include "phone.h"
#include "phoneclaimd.h"
#include "xmalloc.h"

/* Numbers waiting for the worker at most; more are parsed in place. */
#define API_WORKER_MAX	1024
/* A group's claims in one transaction at most (see api_turn_cb). */
#define API_TURN_MAX	128

struct api_request {
	struct api_body	 b;		/* the request's body, parsed */
	char		 e164[PHONE_E164_SIZE];
	/* While the worker parses the number. */
	struct http	*h;
	struct http_ctx	 ctx;
	const char	*region;
	int		 rv;
	/* While a worker runs the whole claim (threads > 1). */
	int		 cached;	/* the number was in the cache */
	int		 claim_rv;	/* of claims_request */
	struct claims_answer a;
	/* While it waits for the turn's transaction (a group). */
	TAILQ_ENTRY(api_request) entry;
	/* A claim of a batch (api_batch_cb), its place there; else NULL. */
	struct api_batch *batch;
	size_t		 idx;
};

/*
 * A batch of claims a replica forwarded (batch.c): the request, kept
 * until every claim of it has its answer, and the answers.
 */
struct api_batch {
	struct http		*h;
	struct http_ctx		 ctx;
	size_t			 n;
	size_t			 left;		/* claims not answered */
	struct batch_item	 items[BATCH_MAX];
	char			 bodies[BATCH_MAX][128];
};

TAILQ_HEAD(api_requests, api_request);

/* A group's claims of this turn of the loop (api_turn_cb). */
static struct api_requests	 api_turn = TAILQ_HEAD_INITIALIZER(api_turn);
static size_t			 api_nturn;
static struct event		*api_turn_ev;

static const char	*api_field(yajl_val, const char *, const char **);
static int		 api_action(const char *);
static int		 api_claim(struct http *, struct evhttp_request *,
			    struct api_request *);
static void		 api_turn_cb(evutil_socket_t, short, void *);
static void		 api_answer(struct http *, struct evhttp_request *,
			    struct api_request *, int);
static int		 api_answer_text(struct api_request *, int, char *,
			    size_t, long long *);
static void		 api_batch_cb(struct http *, struct evhttp_request *);
static int		 api_batch_claim(struct http *, struct api_batch *,
			    size_t, struct api_request *);
static void		 api_batch_set(struct api_batch *, size_t, int,
			    long long, const char *);
static void		 api_number_work(void *);
static void		 api_number_done(void *, int);
static int		 api_number_back(struct api_request *, int);
static int		 api_pool(struct http *, struct evhttp_request *,
			    struct api_request *);
static void		 api_claim_work(void *);
static void		 api_claim_done(void *, int);

/* Find a string member of an object; an error code if it is no string. */
static const char *
api_field(yajl_val obj, const char *name, const char **out)
{
	size_t	i;

	*out = NULL;
	for (i = 0; i < obj->u.object.len; i++) {
		if (strcmp(obj->u.object.keys[i], name) != 0)
			continue;
		if (!YAJL_IS_STRING(obj->u.object.values[i]))
			return ("not a string");
		*out = YAJL_GET_STRING(obj->u.object.values[i]);
	}
	return (NULL);
}

/* Map an action name (Action trigger or phone provider) to the enum. */
static int
api_action(const char *s)
{
	if (s == NULL || strcmp(s, "enrollment") == 0 ||
	    strcmp(s, "otp_enroll") == 0)
		return (CLAIMS_ENROLL);
	if (strcmp(s, "second-factor-authentication") == 0 ||
	    strcmp(s, "otp_verify") == 0)
		return (CLAIMS_CHALLENGE);
	return (0);
}

/*
 * Parse the len bytes of a claim request's body: "invalid_json", or NULL
 * with the number as sent and r->error set for the first bad field after
 * it.  The number is checked last, by the caller, since it may need the
 * worker; a bad number is still the error reported first.  No evhttp
 * here, so that tests/fuzz can call it with any bytes.
 */
const char *
api_parse(const char *body, size_t len, struct api_body *r)
{
	yajl_val	 root;
	const char	*phone, *user, *action;
	char		*cause;

	memset(r, 0, sizeof *r);
	root = json_parse_strict(body, len, &cause);
	if (root == NULL) {
		free(cause);
		return ("invalid_json");
	}
	if (!YAJL_IS_OBJECT(root)) {
		json_free(root);
		return ("invalid_json");
	}
	if (api_field(root, "phone_number", &phone) == NULL && phone != NULL &&
	    (r->phone_len = strlen(phone)) <= PHONE_INPUT_MAX) {
		memcpy(r->phone, phone, r->phone_len + 1);
		r->phone_ok = 1;
	}
	if (api_field(root, "user_id", &user) != NULL || user == NULL ||
	    !claims_user_id_ok(user))
		r->error = "invalid_user_id";
	else {
		snprintf(r->user_id, sizeof r->user_id, "%s", user);
		if (api_field(root, "action", &action) != NULL ||
		    (r->action = api_action(action)) == 0)
			r->error = "invalid_action";
	}
	json_free(root);
	return (NULL);
}

/* POST /v1/claims: check-and-reserve, or learn on a login challenge. */
void
api_claims_cb(struct evhttp_request *req, void *arg)
{
	struct http		*h = arg;
	struct api_request	*r;
	struct evbuffer		*buf = evhttp_request_get_input_buffer(req);
	const char		*error, *region = http_conf(h)->default_region;
	const char		*ctype;
	int			 rv;

	if (!http_authorised(h, req, HTTP_TOKEN_API)) {
		http_error(h, req, 401, "unauthorized");
		return;
	}
	if ((ctype = evhttp_find_header(evhttp_request_get_input_headers(req),
	    "Content-Type")) != NULL && strcasecmp(ctype, BATCH_TYPE) == 0) {
		api_batch_cb(h, req);
		return;
	}
	r = xcalloc(1, sizeof *r);
	error = api_parse((const char *)evbuffer_pullup(buf, -1),
	    evbuffer_get_length(buf), &r->b);
	if (error == NULL && !r->b.phone_ok)
		error = "invalid_phone_number";
	if (error != NULL) {
		http_error(h, req, 400, error);
		free(r);
		return;
	}
	if (api_pool(h, req, r))
		return;
	if (!phone_lookup(r->b.phone, r->b.phone_len, region, r->e164, &rv)) {
		if (r->b.error == NULL && http_worker(h) != NULL &&
		    worker_queued(http_worker(h)) < API_WORKER_MAX) {
			r->h = h;
			r->region = region;
			http_suspend(h, req, &r->ctx);
			worker_submit(http_worker(h), api_number_work,
			    api_number_done, r);
			return;
		}
		rv = phone_normalise(r->b.phone, r->b.phone_len, region,
		    r->e164);
	}
	if (rv != 0)
		http_error(h, req, 400, "invalid_phone_number");
	else if (r->b.error != NULL)
		http_error(h, req, 400, r->b.error);
	else if (api_claim(h, req, r))
		return;
	explicit_bzero(r->b.phone, sizeof r->b.phone);
	free(r);
}

/* On the worker: the slow part of the number's normalisation. */
static void
api_number_work(void *arg)
{
	struct api_request	*r = arg;

	r->rv = phone_parse_uncached(r->b.phone, r->b.phone_len, r->region,
	    r->e164);
}

/*
 * A worker's answer is back on the loop: remember the number (if asked),
 * resume the request, and answer 400 if the number was not one.  0 if the
 * caller goes on with the request.
 */
static int
api_number_back(struct api_request *r, int remember)
{
	if (remember)
		phone_remember(r->b.phone, r->b.phone_len, r->region,
		    r->rv == 0 ? r->e164 : NULL);
	http_resume(r->h, &r->ctx);
	if (r->rv == 0)
		return (0);
	http_error(r->h, r->ctx.req, 400, "invalid_phone_number");
	return (-1);
}

/* Back on the loop: remember the number, then the claim goes on. */
static void
api_number_done(void *arg, int cancelled)
{
	struct api_request	*r = arg;
	int			 kept;

	if (!cancelled) {
		kept = api_number_back(r, 1) == 0 &&
		    api_claim(r->h, r->ctx.req, r);
		http_resumed(r->h);
		if (kept)
			return;
	}
	explicit_bzero(r->b.phone, sizeof r->b.phone);
	free(r);
}

/*
 * With threads > 1, hand the whole claim to a worker and return 1; 0 to
 * go on here (one thread, a group, or the workers' queue full).
 */
static int
api_pool(struct http *h, struct evhttp_request *req, struct api_request *r)
{
	const char	*region = http_conf(h)->default_region;

	if (http_conf(h)->threads < 2 || repl_enabled() ||
	    http_worker(h) == NULL ||
	    worker_queued(http_worker(h)) >= API_WORKER_MAX)
		return (0);
	if (!http_store_ok(h)) {
		http_error(h, req, 503, "unavailable");
		free(r);
		return (1);
	}
	r->cached = phone_lookup(r->b.phone, r->b.phone_len, region, r->e164,
	    &r->rv);
	r->h = h;
	r->region = region;
	http_suspend(h, req, &r->ctx);
	worker_submit(http_worker(h), api_claim_work, api_claim_done, r);
	return (1);
}

/* On a worker: parse the number if need be, then the claim's transaction. */
static void
api_claim_work(void *arg)
{
	struct api_request	*r = arg;

	if (!r->cached)
		r->rv = phone_parse_uncached(r->b.phone, r->b.phone_len,
		    r->region, r->e164);
	if (r->rv == 0 && r->b.error == NULL)
		r->claim_rv = claims_request(r->e164, r->b.user_id,
		    r->b.action, claims_clock_ms(), &r->a);
}

/* Back on the loop: remember the number, queue the answer for the flush. */
static void
api_claim_done(void *arg, int cancelled)
{
	struct api_request	*r = arg;

	if (!cancelled) {
		if (api_number_back(r, !r->cached) != 0)
			/* answered */;
		else if (r->b.error != NULL)
			http_error(r->h, r->ctx.req, 400, r->b.error);
		else
			api_answer(r->h, r->ctx.req, r, r->claim_rv);
		http_resumed(r->h);
	}
	explicit_bzero(r->b.phone, sizeof r->b.phone);
	free(r);
}

/*
 * The claim itself, the request checked and its number normalised.  In a
 * group it waits for the end of this turn of the loop, and 1 says that r
 * is kept for it; else 0, answered.  req is NULL for a batch's claim
 * (the store checked by the caller).
 */
static int
api_claim(struct http *h, struct evhttp_request *req, struct api_request *r)
{
	if (!http_store_ok(h)) {
		http_error(h, req, 503, "unavailable");
		return (0);
	}
	if (!repl_enabled()) {
		api_answer(h, req, r, claims_request(r->e164, r->b.user_id,
		    r->b.action, claims_clock_ms(), &r->a));
		return (0);
	}
	if (api_turn_ev == NULL && (api_turn_ev = event_new(http_base(h), -1,
	    0, api_turn_cb, h)) == NULL)
		fatalx("event_new");
	r->h = h;
	if (req != NULL)
		http_suspend(h, req, &r->ctx);
	TAILQ_INSERT_TAIL(&api_turn, r, entry);
	if (api_nturn++ == 0)
		event_active(api_turn_ev, EV_TIMEOUT, 0);
	return (1);
}

/*
 * A group's claims of one turn of the loop: the claims that came in
 * while the loop went through its ready sockets, in one transaction (a
 * child each, claims_request_many), so that the group sends, applies and
 * acknowledges one commit for all of them instead of one each.  libevent
 * runs this once the callbacks already active have run, so the turn is
 * every request that came with them.  Each answer is queued like any
 * other and waits for the flush that follows the commit (I2).  At most
 * API_TURN_MAX claims a transaction: the rest take the next.
 */
static void
api_turn_cb(evutil_socket_t fd, short events, void *arg)
{
	struct claims_req	 reqs[API_TURN_MAX];
	struct api_request	*r, *batch[API_TURN_MAX];
	struct http		*h = arg;
	int64_t			 now_ms = claims_clock_ms();
	size_t			 i, n;

	(void)fd;
	(void)events;
	while (!TAILQ_EMPTY(&api_turn)) {
		n = 0;
		while (n < API_TURN_MAX && (r = TAILQ_FIRST(&api_turn)) !=
		    NULL) {
			TAILQ_REMOVE(&api_turn, r, entry);
			api_nturn--;
			memset(&reqs[n], 0, sizeof reqs[n]);
			reqs[n].e164 = r->e164;
			reqs[n].user_id = r->b.user_id;
			reqs[n].action = r->b.action;
			reqs[n].now_ms = now_ms;
			reqs[n].answer = &r->a;
			batch[n++] = r;
		}
		claims_request_many(reqs, n);
		for (i = 0; i < n; i++) {
			r = batch[i];
			if (r->batch != NULL)
				api_answer(h, NULL, r, reqs[i].rv);
			else {
				http_resume(h, &r->ctx);
				api_answer(h, r->ctx.req, r, reqs[i].rv);
				http_resumed(h);
			}
			explicit_bzero(r->b.phone, sizeof r->b.phone);
			free(r);
		}
	}
}

/* Answer the claims still waiting for their turn, and free its event. */
void
api_free(void)
{
	if (api_turn_ev == NULL)
		return;
	if (!TAILQ_EMPTY(&api_turn))
		api_turn_cb(-1, 0, TAILQ_FIRST(&api_turn)->h);
	event_free(api_turn_ev);
	api_turn_ev = NULL;
}

/*
 * The answer to a claim that came to rv (a store code) and r->a: its
 * status, its body (size bytes at most) and its Retry-After (0: none).
 */
static int
api_answer_text(struct api_request *r, int rv, char *body, size_t size,
    long long *retry)
{
	struct claims_answer	 a = r->a;
	char			 user[DEADLETTER_LOG_SIZE];
	int			 code = 200;

	*retry = 0;
	if (rv != STORE_OK) {
		snprintf(body, size, "{\"error\":\"unavailable\"}");
		return (503);
	}
	if (a.result == CLAIMS_RESERVED)
		snprintf(body, size,
		    "{\"result\":\"reserved\",\"expires_in\":%lld}",
		    (long long)a.expires_in);
	else if ((a.result == CLAIMS_TAKEN || a.result == CLAIMS_LIMITED) &&
	    !a.enforced)
		snprintf(body, size,
		    "{\"result\":\"%s\",\"enforced\":false}",
		    claims_result_name(a.result));
	else if (a.result == CLAIMS_LIMITED) {
		snprintf(body, size,
		    "{\"result\":\"limited\",\"retry_after\":%lld}",
		    (long long)a.retry_after);
		*retry = (long long)a.retry_after;
		code = 429;
	} else
		snprintf(body, size, "{\"result\":\"%s\"}",
		    claims_result_name(a.result));
	if (a.result == CLAIMS_TAKEN && a.enforced)
		code = 409;
	/* Its arguments cost more than the line: build them only if shown. */
	if (log_get_level() >= LOG_LEVEL_DEBUG)
		log_debug("claim by %s on a number ending %s: %s",
		    deadletter_log_value(r->b.user_id, user),
		    r->e164 + strlen(r->e164) - LAST4_LEN,
		    claims_result_name(a.result));
	return (code);
}

/*
 * Answer a claim that came to rv (a store code) and r->a: on req, or in
 * its batch (req NULL).
 */
static void
api_answer(struct http *h, struct evhttp_request *req, struct api_request *r,
    int rv)
{
	char		 body[128], retry_s[24];
	long long	 retry;
	int		 code;

	code = api_answer_text(r, rv, body, sizeof body, &retry);
	if (r->batch != NULL) {
		api_batch_set(r->batch, r->idx, code, retry, body);
		return;
	}
	if (code == 503) {
		http_error(h, req, 503, "unavailable");
		return;
	}
	if (retry != 0) {
		snprintf(retry_s, sizeof retry_s, "%lld", retry);
		evhttp_add_header(evhttp_request_get_output_headers(req),
		    "Retry-After", retry_s);
	}
	http_reply(h, req, code, body);
}

/*
 * POST /v1/claims with Content-Type BATCH_TYPE: the claims of a turn of a
 * replica's loop, forwarded in one request (repl.c).  Each is checked and
 * claimed as if it came alone, but on the loop (no worker: its number is
 * parsed here if the cache does not know it) and, in a group, in this
 * turn's transaction.  The answers go back together, once the last is
 * known, queued for the flush (I2) like any claim's; a body that is not
 * exactly a batch is 400 "invalid_request" and claims nothing, and the
 * whole batch is 503 while the store is not open.
 */
static void
api_batch_cb(struct http *h, struct evhttp_request *req)
{
	struct evbuffer		*buf = evhttp_request_get_input_buffer(req);
	struct api_batch	*b;
	struct api_request	*r;
	const char		*body;
	size_t			 i;
	int			 n;

	b = xcalloc(1, sizeof *b);
	body = (const char *)evbuffer_pullup(buf, -1);
	if ((n = batch_split(body, evbuffer_get_length(buf), b->items,
	    BATCH_MAX)) < 0) {
		http_error(h, req, 400, "invalid_request");
		free(b);
		return;
	}
	if (!http_store_ok(h)) {
		/* The whole batch goes again (repl.c), as a claim would. */
		http_error(h, req, 503, "unavailable");
		free(b);
		return;
	}
	b->h = h;
	b->n = b->left = (size_t)n;
	http_suspend(h, req, &b->ctx);
	/* One more than the claims: none may answer the batch before the end. */
	b->left++;
	for (i = 0; i < b->n; i++) {
		r = xcalloc(1, sizeof *r);
		r->batch = b;
		r->idx = i;
		if (api_batch_claim(h, b, i, r))
			continue;
		explicit_bzero(r->b.phone, sizeof r->b.phone);
		free(r);
	}
	api_batch_set(b, BATCH_MAX, 0, 0, NULL);
}

/*
 * Claim b's item i as api_claims_cb would (r, for it, is kept if this
 * returns 1: it waits for the turn), or answer it.
 */
static int
api_batch_claim(struct http *h, struct api_batch *b, size_t i,
    struct api_request *r)
{
	const char	*error, *region = http_conf(h)->default_region;
	char		 body[96];
	int		 code = 400;

	error = api_parse(b->items[i].p, b->items[i].len, &r->b);
	if (error == NULL && !r->b.phone_ok)
		error = "invalid_phone_number";
	if (error == NULL && phone_normalise(r->b.phone, r->b.phone_len,
	    region, r->e164) != 0)
		error = "invalid_phone_number";
	if (error == NULL)
		error = r->b.error;
	if (error == NULL && !http_store_ok(h)) {
		/* Failed since the batch came: this claim goes again alone. */
		error = "unavailable";
		code = 503;
	}
	if (error != NULL) {
		snprintf(body, sizeof body, "{\"error\":\"%s\"}", error);
		api_batch_set(b, i, code, 0, body);
		return (0);
	}
	return (api_claim(h, NULL, r));
}

/*
 * Item i of batch b has its answer: code, retry and body; i BATCH_MAX
 * says that the batch has been read.  Once both, and every item, are
 * done, queue the batch's answer for the flush and free the batch.
 */
static void
api_batch_set(struct api_batch *b, size_t i, int code, long long retry,
    const char *body)
{
	struct http	*h = b->h;
	char		*text;
	size_t		 len;

	if (i < b->n) {
		snprintf(b->bodies[i], sizeof b->bodies[i], "%s", body);
		b->items[i].p = b->bodies[i];
		b->items[i].len = strlen(b->bodies[i]);
		b->items[i].code = code;
		b->items[i].retry = retry;
	}
	if (--b->left > 0)
		return;
	text = batch_encode(b->items, b->n, 1, &len);
	http_resume(h, &b->ctx);
	http_reply_type(h, b->ctx.req, 200, BATCH_TYPE, text);
	http_resumed(h);
	free(text);
	free(b);
}

/*
 * GET /healthz: 200 while the store accepts commits, else 503.  Alone,
 * the answer waits for the next flush like a write's; in a group it goes
 * at once: a flush there waits for the replicas' acknowledgements of the
 * commits before it (repl_ack.c), and the other members read this
 * member's clock from the answer (repl_clock.c).
 */
void
api_healthz_cb(struct evhttp_request *req, void *arg)
{
	struct http	*h = arg;
	char		 now[32];

	/* The clock, for the other members of a group (repl_clock.c). */
	snprintf(now, sizeof now, "%lld", (long long)repl_clock_now_ms());
	evhttp_add_header(evhttp_request_get_output_headers(req),
	    REPL_CLOCK_HEADER, now);
	if (http_store_ok(h) && repl_enabled())
		http_reply_now(h, req, 200, "application/json",
		    "{\"status\":\"ok\"}");
	else if (http_store_ok(h))
		http_reply(h, req, 200, "{\"status\":\"ok\"}");
	else
		http_error(h, req, 503, "unavailable");
}
