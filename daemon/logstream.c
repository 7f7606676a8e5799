/*
 * POST /v1/log-stream: Auth0's Custom Webhook log stream.  The body is a
 * JSON array of items, JSON Lines, or one item; an item is {log_id, data}
 * or a bare event.  Items are checked first (bad ones are rejected and
 * kept, redacted, in the dead-letter file), then applied: each log id is
 * remembered as seen with the event's effects, in the same transaction,
 * so a redelivery changes nothing (invariant I3).  The answer waits for
 * the log flush like every other answer.  The Management API backfill
 * (mgmt.c) applies its pages through logstream_ingest, in one
 * transaction each.
 *
 * A webhook request is not handled in one go, so that the largest batch
 * allowed (max_body_size, some 36,000 events in 8 MiB) does not hold the
 * event loop for the best part of a second: the claim API and /healthz
 * must stay fast meanwhile.  A body over LOGSTREAM_PARSE_HERE is parsed
 * and checked on a worker thread of its own (the API's worker parses
 * numbers and must not wait behind it).  The items are then applied in
 * slices of LOGSTREAM_SLICE, one transaction each, on a zero timeout, so
 * that the loop serves what came in between two slices.  The answer is
 * queued after the last slice, so it goes out once all of them are on
 * disk.  A store failure after some slices answers 503, and Auth0's
 * redelivery finds the committed events seen (duplicates) and applies the
 * rest; the cursor of the backfill moves with the last slice only.
 * Requests are applied one after another, in the order they arrived, and
 * only the one being applied is parsed: one tree in memory, as before.
 */
#include "config.h"

#include <sys/types.h>
#include <sys/queue.h>

#include <ctype.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <yajl/yajl_tree.h>

#include "log.h"
#include "phone.h"
#include "phoneclaimd.h"
#include "xmalloc.h"

#define LOGSTREAM_PRUNE_BATCH	10000
/*
 * Items in one request, at most.  Each request is one transaction, and
 * Berkeley DB's lock table is sized for this (store.c); a bigger batch
 * would fail on every redelivery, so it is refused up front.
 */
#define LOGSTREAM_MAX_ITEMS	100000
#define LOGSTREAM_META_LAST	"last_log_id"
/*
 * Items of a webhook request applied in one transaction, between two
 * returns to the event loop: a few milliseconds of work.
 */
#define LOGSTREAM_SLICE		256
/*
 * Bodies up to this size are parsed on the loop (a few milliseconds):
 * with batches in sequence, the loop would only wait for the worker.
 */
#define LOGSTREAM_PARSE_HERE	(1024 * 1024)
/*
 * The worker reads a request's phone numbers ahead of the loop (see
 * logstream_warm_work): at most this many an item, this deep in its tree,
 * for requests of at least LOGSTREAM_WARM_MIN items.
 */
#define LOGSTREAM_HINTS		2
#define LOGSTREAM_WARM_DEPTH	8
#define LOGSTREAM_WARM_MIN	16

/* A phone number of an item, parsed by the worker. */
struct logstream_hint {
	const char	*text;		/* a string of the item's tree */
	size_t		 len;
	int		 rv;		/* of phone_parse_uncached */
	char		 e164[PHONE_E164_SIZE];
};

/* The numbers of one item, parsed by the worker. */
struct logstream_warm {
	struct logstream_hint	 hint[LOGSTREAM_HINTS];
	int			 n;
};

struct logstream_item {
	yajl_val	 root;		/* tree to free, or NULL if shared */
	yajl_val	 data;		/* the event */
	const char	*log_id;
	int		 ignored;	/* changed nothing: count its type */
	int		 undated;	/* applied, without a readable date */
	const char	*unreadable;	/* why its number is unreadable */
	const char	*user;		/* and whose it is */
};

/* A rejected item, kept until the request is committed. */
struct logstream_reject {
	const char	*reason;
	char		*log_id;
	char		*text;
	size_t		 len;
};

/* What applying some of a request's items did. */
struct logstream_counts {
	size_t			 applied;
	size_t			 duplicates;
	size_t			 unreadable;	/* numbers it cannot read */
	struct events_counts	 ignored;
	char			 last[LOG_ID_MAX + 1];	/* highest log id */
	char			 latest[LOG_ID_MAX + 1]; /* by date, */
	int64_t			 last_date;	/* and its date (ms) */
	size_t			 undated;	/* events without a date */
	char			 undated_first[LOG_ID_MAX + 1];
};

struct logstream_batch {
	yajl_val		 whole;	/* tree of a whole-body parse */
	struct logstream_reject	*rejects;
	size_t			 rejectsize;	/* allocated */
	struct logstream_item	*items;
	size_t			 nitems;
	size_t			 itemsize;	/* allocated */
	size_t			 received;
	size_t			 rejected;
	int64_t			 now;
	int64_t			 now_ms;
	size_t			 from;		/* the items of the */
	size_t			 to;		/* transaction, to excluded */
	struct logstream_counts	 c;	/* by the transaction */
	struct logstream_counts	 done;	/* by those committed */
	/* The worker's reading ahead, or NULL (logstream_warm_work). */
	struct logstream_warm	*warm;
	atomic_size_t		 warmed;	/* items read so far */
	atomic_int		 warm_stop;	/* the loop is done */
};

/* A webhook request: parsed on the worker, then applied in slices. */
struct logstream_job {
	struct http		*h;
	struct http_ctx		 ctx;
	struct evbuffer		*body;
	size_t			 len;
	int			 parsed;	/* logstream_parse's answer */
	struct logstream_batch	 b;
	TAILQ_ENTRY(logstream_job) entry;
};
TAILQ_HEAD(logstream_jobs, logstream_job);

static struct worker		*logstream_worker;	/* NULL: none */
static struct event		*logstream_ev;		/* the next slice */
static const struct timeval	 logstream_now = { 0, 0 };
static struct logstream_jobs	 logstream_jobs =	/* in arrival order */
    TAILQ_HEAD_INITIALIZER(logstream_jobs);

static void	logstream_reject(struct logstream_batch *, const char *,
		    const char *, const char *, size_t);
static void	logstream_dead_letter(struct logstream_batch *);
static void	logstream_add(struct logstream_batch *, yajl_val, yajl_val,
		    const char *, size_t);
static int	logstream_parse(struct logstream_batch *, const char *,
		    size_t);
static int	logstream_parse_lines(struct logstream_batch *, const char *,
		    size_t);
static const char *logstream_log_id(yajl_val, yajl_val);
static int	logstream_later(const char *, const char *);
static int	logstream_check(const struct logstream_batch *, int,
		    const char *, const char *, size_t);
static int	logstream_txn(struct store_txn *, void *);
static const char *logstream_cursor(const struct logstream_batch *);
static void	logstream_committed(struct logstream_batch *);
static int	logstream_apply_one(struct store_txn *,
		    struct logstream_batch *, struct logstream_item *);
static int	logstream_prune_txn(struct store_txn *, void *);
static int	logstream_last_txn(struct store_txn *, void *);
static void	logstream_batch_free(struct logstream_batch *);
static void	logstream_finish(struct logstream_batch *, const char *,
		    struct logstream_result *);
static void	logstream_count_unreadable(const struct logstream_item *);
static void	logstream_metrics(const struct logstream_batch *,
		    const char *, int);
static void	logstream_latest(struct logstream_counts *, const char *,
		    int64_t);
static void	logstream_result(const struct logstream_batch *, const char *,
		    struct logstream_result *);
static void	logstream_start(struct logstream_job *);
static void	logstream_parse_work(void *);
static void	logstream_parse_done(void *, int);
static void	logstream_slice_cb(evutil_socket_t, short, void *);
static void	logstream_answer(struct logstream_job *, int, const char *);
static void	logstream_job_end(struct logstream_job *);
static void	logstream_job_free(struct logstream_job *);
static void	logstream_warm_value(yajl_val, struct logstream_warm *, int);
static void	logstream_warm_work(void *);
static void	logstream_warm_done(void *, int);
static void	logstream_free_work(void *);
static void	logstream_free_done(void *, int);

/* Count a bad item and keep it for the dead-letter file. */
static void
logstream_reject(struct logstream_batch *b, const char *reason,
    const char *log_id, const char *text, size_t len)
{
	struct logstream_reject	*r;

	if (b->rejected == b->rejectsize) {
		b->rejectsize = b->rejectsize == 0 ? 16 : b->rejectsize * 2;
		b->rejects = xreallocarray(b->rejects, b->rejectsize,
		    sizeof *b->rejects);
	}
	r = &b->rejects[b->rejected++];
	r->reason = reason;
	r->log_id = log_id != NULL ? xstrdup(log_id) : NULL;
	r->text = xmalloc(len + 1);
	memcpy(r->text, text, len);
	r->text[len] = '\0';
	r->len = len;
}

/*
 * Write the rejected items to the dead-letter file (redacted there) and
 * log them; done once the request is committed, so a request that Auth0
 * delivers again after a 503 is not kept twice.
 */
static void
logstream_dead_letter(struct logstream_batch *b)
{
	struct logstream_reject	*r;
	size_t			 i;
	char			 id[DEADLETTER_LOG_SIZE];

	for (i = 0; i < b->rejected; i++) {
		r = &b->rejects[i];
		log_warnx("log stream: rejected an item%s%s: %s",
		    r->log_id != NULL ? " with log id " : "",
		    r->log_id != NULL ? deadletter_log_value(r->log_id, id) : "",
		    r->reason);
		deadletter_add(r->reason, r->log_id, r->text, r->len);
	}
}

/*
 * Return the item's log id: "log_id", else data's "log_id", else "_id";
 * NULL if none is a usable string (one that is not UTF-8 is never used).
 */
static const char *
logstream_log_id(yajl_val item, yajl_val data)
{
	static const char	*names[] = { "log_id", "_id" };
	const char		*path[2] = { NULL, NULL };
	yajl_val		 v;
	const char		*s;
	size_t			 i, len;

	for (i = 0; i < 3; i++) {
		path[0] = names[i == 2 ? 1 : 0];
		v = yajl_tree_get(i == 1 ? data : item, path, yajl_t_string);
		if (v == NULL || (s = YAJL_GET_STRING(v)) == NULL)
			continue;
		len = strlen(s);
		if (len > 0 && len <= LOG_ID_MAX && json_utf8_ok(s, len))
			return (s);
	}
	return (NULL);
}

/*
 * Check one item and keep it, or reject it.  root is the item's own tree
 * (JSON Lines) or NULL when it belongs to the whole-body tree.
 */
static void
logstream_add(struct logstream_batch *b, yajl_val root, yajl_val v,
    const char *text, size_t len)
{
	const char		*path[] = { "data", NULL };
	struct logstream_item	*it;
	yajl_val		 data;
	const char		*log_id = NULL, *why = NULL;
	char			*gen = NULL;

	b->received++;
	if (!YAJL_IS_OBJECT(v))
		why = "item is not an object";
	else if ((data = yajl_tree_get(v, path, yajl_t_any)) != NULL &&
	    !YAJL_IS_OBJECT(data)) {
		why = "data is not an object";
		log_id = logstream_log_id(v, v);
	} else {
		if (data == NULL)
			data = v;
		if ((log_id = logstream_log_id(v, data)) == NULL)
			why = "no log id";
		else if (events_type(data) == NULL)
			why = "no event type";
		else
			why = events_refusal(data);
	}
	if (why != NULL) {
		if (text == NULL)
			text = gen = json_text(v, &len);
		logstream_reject(b, why, log_id, text, len);
		free(gen);
		json_free(root);
		return;
	}
	if (b->nitems == b->itemsize) {
		b->itemsize = b->itemsize == 0 ? 64 : b->itemsize * 2;
		b->items = xreallocarray(b->items, b->itemsize,
		    sizeof *b->items);
	}
	it = &b->items[b->nitems++];
	it->root = root;
	it->data = data;
	it->log_id = log_id;
}

/* JSON Lines: one item per line; a line that is not JSON is rejected. */
static int
logstream_parse_lines(struct logstream_batch *b, const char *body,
    size_t len)
{
	const char	*p = body, *end = body + len, *nl;
	yajl_val	 v;
	char		*cause;
	size_t		 good = 0, n, lines = 0;

	for (; p < end && (nl = memchr(p, '\n', end - p)) != NULL; p = nl + 1)
		lines++;
	if (lines > LOGSTREAM_MAX_ITEMS)
		return (-2);
	for (p = body; p < end; p = nl + 1) {
		if ((nl = memchr(p, '\n', end - p)) == NULL)
			nl = end;
		for (n = nl - p; n > 0 && isspace((unsigned char)p[n - 1]); n--)
			;
		if (n == 0)
			continue;
		if ((v = json_parse(p, n, &cause)) == NULL) {
			free(cause);
			b->received++;
			logstream_reject(b, "line is not JSON", NULL, p, n);
			continue;
		}
		if (YAJL_IS_OBJECT(v))
			good++;
		logstream_add(b, v, v, NULL, 0);
	}
	/* No object at all: the body is not JSON items, not a batch. */
	return (good > 0 ? 0 : -1);
}

/*
 * Recognise the body's format and collect its items; -1 if it is not JSON
 * at all, -2 if it holds more than LOGSTREAM_MAX_ITEMS items (or lines).
 * '[': an array of items.  Otherwise one item, or else JSON Lines, where a
 * bad line is one rejected item as long as some line is good.
 */
static int
logstream_parse(struct logstream_batch *b, const char *body, size_t len)
{
	char	*cause;
	size_t	 i, skip = 0;
	int	 too_many = 0;

	while (skip < len && isspace((unsigned char)body[skip]))
		skip++;
	if (skip == len)
		return (-1);
	if (body[skip] == '{' || body[skip] == '[') {
		b->whole = json_parse_items(body, len, LOGSTREAM_MAX_ITEMS,
		    &too_many, &cause);
		if (b->whole == NULL)
			free(cause);
		if (too_many)
			return (-2);
	}
	if (b->whole == NULL || YAJL_IS_OBJECT(b->whole) == 0) {
		if (b->whole != NULL && YAJL_IS_ARRAY(b->whole)) {
			for (i = 0; i < b->whole->u.array.len; i++)
				logstream_add(b, NULL,
				    b->whole->u.array.values[i], NULL, 0);
			return (0);
		}
		json_free(b->whole);
		b->whole = NULL;
		if (body[skip] == '[')
			return (-1);
		return (logstream_parse_lines(b, body, len));
	}
	logstream_add(b, NULL, b->whole, NULL, 0);
	return (0);
}

/* Return 1 if log id a comes after b (longer, or equal length and later). */
static int
logstream_later(const char *a, const char *b)
{
	size_t	la = strlen(a), lb = strlen(b);

	if (la != lb)
		return (la > lb);
	return (strcmp(a, b) > 0);
}

/*
 * Give the number cache what the worker parsed of this item, if it got
 * there (logstream_warm_work), so that events.c finds it there.
 */
static void
logstream_learn(struct logstream_batch *b, const struct logstream_item *it)
{
	const struct logstream_warm	*w;
	size_t				 i = (size_t)(it - b->items);
	int				 k;

	if (b->warm == NULL ||
	    i >= atomic_load_explicit(&b->warmed, memory_order_acquire))
		return;
	w = &b->warm[i];
	for (k = 0; k < w->n; k++)
		phone_learn(w->hint[k].text, w->hint[k].len, NULL,
		    w->hint[k].rv, w->hint[k].e164);
}

/*
 * Apply one checked item: seen before, or its effects.  The event is read
 * once: events_apply_info hands back its date and its unreadable number.
 */
static int
logstream_apply_one(struct store_txn *txn, struct logstream_batch *b,
    struct logstream_item *it)
{
	struct events_info	 info;
	int			 rv, outcome;

	rv = store_seen_add(txn, it->log_id, b->now);
	it->ignored = it->undated = 0;
	it->unreadable = it->user = NULL;
	if (rv == STORE_EXISTS) {
		b->c.duplicates++;
		return (STORE_OK);
	}
	if (rv != STORE_OK)
		return (rv);
	logstream_learn(b, it);
	if ((rv = events_apply_info(txn, it->data, it->log_id, b->now_ms,
	    &outcome, &info)) != STORE_OK)
		return (rv);
	it->undated = info.undated;
	it->unreadable = info.unreadable;
	it->user = info.user;
	if (it->unreadable != NULL)
		b->c.unreadable++;
	if (logstream_later(it->log_id, b->c.last))
		snprintf(b->c.last, sizeof b->c.last, "%s", it->log_id);
	/* The latest by date (at one date, the later id), an undated none. */
	logstream_latest(&b->c, it->log_id, info.date_ms);
	switch (outcome) {
	case CLAIMS_APPLIED:
		b->c.applied++;
		break;
	case CLAIMS_UNMATCHED:
		b->c.ignored.unmatched++;
		break;
	case CLAIMS_AMBIGUOUS:
		b->c.ignored.ambiguous++;
		break;
	case CLAIMS_STALE:
		b->c.ignored.stale++;
		break;
	default:
		b->c.ignored.ignored++;
		it->ignored = 1;
		it->undated = 0;	/* nothing it could change */
		break;
	}
	return (STORE_OK);
}

/*
 * The highest log id of the request, applied or rejected: where a backfill
 * resumes, so that a rejected event is not fetched, rejected and
 * dead-lettered again.  "" if none.
 */
static const char *
logstream_cursor(const struct logstream_batch *b)
{
	const char	*cursor = b->c.last;
	size_t		 i;

	if (logstream_later(b->done.last, cursor))
		cursor = b->done.last;
	for (i = 0; i < b->rejected; i++) {
		if (b->rejects[i].log_id != NULL &&
		    logstream_later(b->rejects[i].log_id, cursor))
			cursor = b->rejects[i].log_id;
	}
	return (cursor);
}

/*
 * Items from to to in one transaction (run again on deadlock); the last
 * one moves the cursor, so that a request that fails half way leaves it
 * where it was.
 */
static int
logstream_txn(struct store_txn *txn, void *arg)
{
	struct logstream_batch	*b = arg;
	const char		*cursor;
	char			*stored = NULL;
	size_t			 i;
	int			 rv = STORE_OK;

	memset(&b->c, 0, sizeof b->c);
	for (i = b->from; i < b->to && rv == STORE_OK; i++)
		rv = logstream_apply_one(txn, b, &b->items[i]);
	if (rv != STORE_OK || b->to < b->nitems ||
	    (cursor = logstream_cursor(b))[0] == '\0')
		return (rv);
	rv = store_meta_get(txn, LOGSTREAM_META_LAST, &stored);
	if (rv == STORE_NOTFOUND || (rv == STORE_OK &&
	    logstream_later(cursor, stored)))
		rv = store_meta_put(txn, LOGSTREAM_META_LAST, cursor);
	free(stored);
	return (rv);
}

/* Count and log a committed item whose phone number cannot be read. */
static void
logstream_count_unreadable(const struct logstream_item *it)
{
	events_count_unreadable(it->log_id, it->user, it->unreadable);
}

/* Free a batch's trees and items; again, it does nothing. */
static void
logstream_batch_free(struct logstream_batch *b)
{
	size_t	i;

	for (i = 0; i < b->nitems; i++)
		json_free(b->items[i].root);
	free(b->items);
	json_free(b->whole);
	for (i = 0; i < b->rejected; i++) {
		free(b->rejects[i].log_id);
		free(b->rejects[i].text);
	}
	free(b->rejects);
	free(b->warm);
	b->items = NULL;
	b->whole = NULL;
	b->rejects = NULL;
	b->warm = NULL;
	atomic_store(&b->warmed, 0);
	b->nitems = b->itemsize = b->rejected = b->rejectsize = 0;
}

/*
 * Keep in c the latest event by date (at one date, the later log id): the
 * pair status shows as last_event.  An undated event (date 0) is none.
 */
static void
logstream_latest(struct logstream_counts *c, const char *log_id,
    int64_t date)
{
	if (date > c->last_date || (date > 0 && date == c->last_date &&
	    logstream_later(log_id, c->latest))) {
		c->last_date = date;
		snprintf(c->latest, sizeof c->latest, "%s", log_id);
	}
}

/*
 * Count the items of a committed transaction, and add its counts to the
 * request's: counted only now, since a transaction run again must not
 * count twice.
 */
static void
logstream_committed(struct logstream_batch *b)
{
	struct logstream_counts	*d = &b->done, *c = &b->c;
	size_t			 i;

	for (i = b->from; i < b->to; i++) {
		if (b->items[i].ignored)
			events_count_ignored(events_type(b->items[i].data));
		if (b->items[i].undated && d->undated++ == 0)
			snprintf(d->undated_first, sizeof d->undated_first,
			    "%s", b->items[i].log_id);
		if (b->items[i].unreadable != NULL)
			logstream_count_unreadable(&b->items[i]);
	}
	d->applied += c->applied;
	d->duplicates += c->duplicates;
	d->unreadable += c->unreadable;
	d->ignored.ignored += c->ignored.ignored;
	d->ignored.unmatched += c->ignored.unmatched;
	d->ignored.ambiguous += c->ignored.ambiguous;
	d->ignored.stale += c->ignored.stale;
	if (logstream_later(c->last, d->last))
		snprintf(d->last, sizeof d->last, "%s", c->last);
	logstream_latest(d, c->latest, c->last_date);
	memset(c, 0, sizeof *c);
}

/*
 * Add the committed items' counts and latest event to the metrics, with
 * the rejected ones if the request was answered 200 (rejected 1).
 */
static void
logstream_metrics(const struct logstream_batch *b, const char *source,
    int rejected)
{
	const struct logstream_counts	*c = &b->done;
	struct metrics_events		 d;

	memset(&d, 0, sizeof d);
	d.applied = c->applied;
	d.duplicates = c->duplicates;
	d.ignored = c->ignored.ignored + c->ignored.unmatched +
	    c->ignored.ambiguous + c->ignored.stale;
	d.rejected = rejected ? b->rejected : 0;
	d.unmatched = c->ignored.unmatched;
	d.ambiguous = c->ignored.ambiguous;
	d.stale = c->ignored.stale;
	snprintf(d.last_log_id, sizeof d.last_log_id, "%s", c->latest);
	d.last_date_ms = c->last_date;
	events_count_undated(source, c->undated, c->undated_first);
	/* Only a new event says that the stream is flowing. */
	if (c->last[0] != '\0')
		d.last_received = b->now;
	metrics_log_stream(&d);
	/* Doubts were queued for verification in the transactions. */
	if (c->ignored.unmatched + c->ignored.ambiguous > 0)
		mgmt_wake();
}

/*
 * Refuse a body that logstream_parse (its answer rv) found to be no batch:
 * logged, and kept in the dead-letter file if it is not JSON at all.
 * Returns LOGSTREAM_OK, _NOT_JSON or _TOO_MANY.
 */
static int
logstream_check(const struct logstream_batch *b, int rv, const char *source,
    const char *body, size_t len)
{
	if (rv == -2 || b->received > LOGSTREAM_MAX_ITEMS) {
		log_warnx("%s: more than %d items in one request: refused",
		    source, LOGSTREAM_MAX_ITEMS);
		return (LOGSTREAM_TOO_MANY);
	}
	if (rv != 0) {
		log_warnx("%s: body is not JSON (%zu bytes): kept in the "
		    "dead-letter file", source, len);
		deadletter_add("body is not JSON", NULL, body, len);
		return (LOGSTREAM_NOT_JSON);
	}
	return (LOGSTREAM_OK);
}

/*
 * Check a body of items and apply it in one transaction, with the
 * dead-letter file, the metrics and the log line: the one path for the
 * webhook and the backfill (invariant I3).  store_ok 0 means "do not
 * try".  Returns LOGSTREAM_OK, _NOT_JSON, _TOO_MANY or _UNAVAILABLE.
 */
int
logstream_ingest(const char *source, const char *body, size_t len,
    int store_ok, struct logstream_result *r)
{
	struct logstream_batch	 b;
	int			 rv;

	memset(r, 0, sizeof *r);
	memset(&b, 0, sizeof b);
	b.now_ms = claims_clock_ms();
	b.now = b.now_ms / 1000;
	rv = logstream_check(&b, logstream_parse(&b, body, len), source, body,
	    len);
	if (rv == LOGSTREAM_OK) {
		b.to = b.nitems;
		if (!store_ok || claims_run(logstream_txn, &b) != STORE_OK)
			rv = LOGSTREAM_UNAVAILABLE;
	}
	if (rv == LOGSTREAM_OK) {
		logstream_committed(&b);
		logstream_finish(&b, source, r);
	}
	logstream_batch_free(&b);
	return (rv);
}

/* The request is committed: the dead-letter file, the result and the log. */
static void
logstream_finish(struct logstream_batch *b, const char *source,
    struct logstream_result *r)
{
	logstream_dead_letter(b);
	logstream_result(b, source, r);
}

/* Fill the result of a committed batch, count it and log it. */
static void
logstream_result(const struct logstream_batch *b, const char *source,
    struct logstream_result *r)
{
	const struct logstream_counts	*c = &b->done;

	r->received = b->received;
	r->applied = c->applied;
	r->duplicates = c->duplicates;
	r->ignored = c->ignored.ignored + c->ignored.unmatched +
	    c->ignored.ambiguous + c->ignored.stale;
	r->rejected = b->rejected;
	snprintf(r->last, sizeof r->last, "%s", c->last);
	logstream_metrics(b, source, 1);
	log_info("%s: %zu received, %zu applied, %zu duplicate, "
	    "%zu ignored (%zu unmatched, %zu ambiguous, %zu older than a "
	    "release), %zu rejected; %zu with an unreadable number", source,
	    b->received, c->applied, c->duplicates, r->ignored,
	    c->ignored.unmatched, c->ignored.ambiguous, c->ignored.stale,
	    b->rejected, c->unreadable);
}

/* Start the module: the worker thread for the webhook's bodies. */
void
logstream_init(struct event_base *base)
{
	char	*cause;

	if ((logstream_ev = evtimer_new(base, logstream_slice_cb, NULL)) ==
	    NULL)
		fatalx("evtimer_new");
	if ((logstream_worker = worker_start(base, 1, &cause)) == NULL) {
		log_warnx("%s; parsing log-stream batches on the event loop",
		    cause);
		free(cause);
	}
}

/*
 * Stop: the requests not answered yet are dropped (evhttp_free frees
 * them, after this), the worker first, since it may be reading a body.
 */
void
logstream_free(void)
{
	struct logstream_job	*j;

	worker_stop(logstream_worker);
	logstream_worker = NULL;
	while ((j = TAILQ_FIRST(&logstream_jobs)) != NULL)
		logstream_job_free(j);
	if (logstream_ev != NULL)
		event_free(logstream_ev);
	logstream_ev = NULL;
}

/* POST /v1/log-stream: queue the request, and start it if it is first. */
void
logstream_http_cb(struct evhttp_request *req, void *arg)
{
	struct http		*h = arg;
	struct logstream_job	*j;

	if (!http_authorised(h, req, HTTP_TOKEN_LOG_STREAM)) {
		http_error(h, req, 401, "unauthorized");
		return;
	}
	j = xcalloc(1, sizeof *j);
	j->h = h;
	if ((j->body = evbuffer_new()) == NULL)
		fatalx("evbuffer_new");
	/* The chains move, no byte is copied; the worker may read them. */
	evbuffer_add_buffer(j->body, evhttp_request_get_input_buffer(req));
	j->len = evbuffer_get_length(j->body);
	j->b.now_ms = claims_clock_ms();
	j->b.now = j->b.now_ms / 1000;
	http_suspend(h, req, &j->ctx);
	TAILQ_INSERT_TAIL(&logstream_jobs, j, entry);
	if (TAILQ_FIRST(&logstream_jobs) == j)
		logstream_start(j);
}

/*
 * Parse the first request: a large one on the worker, else in the next
 * slice.
 */
static void
logstream_start(struct logstream_job *j)
{
	if (logstream_worker != NULL && j->len > LOGSTREAM_PARSE_HERE)
		worker_submit(logstream_worker, logstream_parse_work,
		    logstream_parse_done, j);
	else
		evtimer_add(logstream_ev, &logstream_now);
}

/* On the worker: the body into items.  Nothing of the loop's. */
static void
logstream_parse_work(void *arg)
{
	struct logstream_job	*j = arg;
	const char		*body = "";

	if (j->len > 0)
		body = (const char *)evbuffer_pullup(j->body, -1);
	j->parsed = logstream_parse(&j->b, body, j->len);
}

/*
 * Back on the loop with the items: refuse the request, or apply it slice
 * by slice.  Cancelled (the daemon stops): drop it, unanswered.
 */
static void
logstream_parse_done(void *arg, int cancelled)
{
	struct logstream_job	*j = arg;
	const char		*body = "";
	int			 rv;

	if (cancelled) {
		logstream_job_free(j);
		return;
	}
	if (j->len > 0)
		body = (const char *)evbuffer_pullup(j->body, -1);
	rv = logstream_check(&j->b, j->parsed, "log stream", body, j->len);
	evbuffer_free(j->body);
	j->body = NULL;
	if (rv == LOGSTREAM_TOO_MANY)
		logstream_answer(j, 413, "body_too_large");
	else if (rv == LOGSTREAM_NOT_JSON)
		logstream_answer(j, 400, "invalid_json");
	else if (!http_store_ok(j->h))
		logstream_answer(j, 503, "unavailable");
	else {
		if (logstream_worker != NULL &&
		    j->b.nitems >= LOGSTREAM_WARM_MIN) {
			j->b.warm = xcalloc(j->b.nitems, sizeof *j->b.warm);
			worker_submit(logstream_worker, logstream_warm_work,
			    logstream_warm_done, j);
		}
		evtimer_add(logstream_ev, &logstream_now);
		return;
	}
	logstream_job_end(j);
}

/*
 * Apply the next slice of the first request, one transaction; then come
 * back on a zero timeout, after the loop has looked at its sockets.  The
 * last slice answers: 200 once the log is on disk, like every answer.
 */
static void
logstream_slice_cb(evutil_socket_t fd, short events, void *arg)
{
	struct logstream_job	*j = TAILQ_FIRST(&logstream_jobs);
	struct logstream_batch	*b;
	struct logstream_result	 r;
	char			 answer[256];

	(void)fd;
	(void)events;
	(void)arg;
	if (j == NULL)
		return;
	if (j->body != NULL) {
		/* Parse here, and apply from the next call. */
		logstream_parse_work(j);
		logstream_parse_done(j, 0);
		return;
	}
	b = &j->b;
	b->from = b->to;
	b->to = b->nitems - b->from > LOGSTREAM_SLICE ?
	    b->from + LOGSTREAM_SLICE : b->nitems;
	if (!http_store_ok(j->h) || claims_run(logstream_txn, b) != STORE_OK) {
		if (b->from > 0)
			log_warnx("log stream: the store failed after %zu of "
			    "%zu items: answering 503", b->from, b->nitems);
		logstream_metrics(b, "log stream", 0);
		logstream_answer(j, 503, "unavailable");
		logstream_job_end(j);
		return;
	}
	logstream_committed(b);
	if (b->to < b->nitems) {
		evtimer_add(logstream_ev, &logstream_now);
		return;
	}
	logstream_finish(b, "log stream", &r);
	snprintf(answer, sizeof answer, "{\"received\":%zu,\"applied\":%zu,"
	    "\"duplicates\":%zu,\"ignored\":%zu,\"rejected\":%zu}",
	    r.received, r.applied, r.duplicates, r.ignored, r.rejected);
	http_resume(j->h, &j->ctx);
	http_reply(j->h, j->ctx.req, 200, answer);
	http_resumed(j->h);
	logstream_job_end(j);
}

/* Answer a request that changed nothing (in this request) right away. */
static void
logstream_answer(struct logstream_job *j, int code, const char *error)
{
	http_resume(j->h, &j->ctx);
	http_error(j->h, j->ctx.req, code, error);
	http_resumed(j->h);
}

/*
 * Done with the first request: free it, and start the next.  Freeing the
 * tree of the largest batch takes tens of milliseconds: the worker does
 * it.
 */
static void
logstream_job_end(struct logstream_job *j)
{
	struct logstream_job	*next;

	TAILQ_REMOVE(&logstream_jobs, j, entry);
	atomic_store(&j->b.warm_stop, 1);
	if (logstream_worker != NULL)
		worker_submit(logstream_worker, logstream_free_work,
		    logstream_free_done, j);
	else
		logstream_free_done(j, 0);
	if ((next = TAILQ_FIRST(&logstream_jobs)) != NULL)
		logstream_start(next);
}

/*
 * On the worker, while the loop applies the request: parse the phone
 * numbers of its enrolments, unenrolments and Management API events
 * ahead of the loop, which gives each item's to the number cache before
 * applying it (logstream_learn), so that libphonenumber's share of an
 * event (a number the cache does not know) runs on the worker's core.
 * Items are read in order and published one by one (warmed); the trees
 * are only read, here and on the loop, and are freed after this job ends
 * (the worker runs the jobs of the queue one after the other).
 */
static void
logstream_warm_work(void *arg)
{
	struct logstream_job	*j = arg;
	struct logstream_batch	*b = &j->b;
	const char		*type;
	size_t			 i;

	for (i = 0; i < b->nitems; i++) {
		if (atomic_load_explicit(&b->warm_stop, memory_order_relaxed))
			break;
		type = events_type(b->items[i].data);
		if (type != NULL && (strcmp(type, "gd_enrollment_complete") ==
		    0 || strcmp(type, "gd_unenroll") == 0 ||
		    strcmp(type, "sapi") == 0))
			logstream_warm_value(b->items[i].data, &b->warm[i], 0);
		atomic_store_explicit(&b->warmed, i + 1, memory_order_release);
	}
}

/*
 * Parse the strings of a tree that events.c would read as a full number
 * ('+' first, none of the masks' characters), the first LOGSTREAM_HINTS.
 */
static void
logstream_warm_value(yajl_val v, struct logstream_warm *w, int depth)
{
	struct logstream_hint	*h;
	const char		*s;
	size_t			 i, len;

	if (v == NULL || w->n == LOGSTREAM_HINTS ||
	    depth > LOGSTREAM_WARM_DEPTH)
		return;
	if (YAJL_IS_OBJECT(v)) {
		for (i = 0; i < v->u.object.len; i++)
			logstream_warm_value(v->u.object.values[i], w,
			    depth + 1);
	} else if (YAJL_IS_ARRAY(v)) {
		for (i = 0; i < v->u.array.len; i++)
			logstream_warm_value(v->u.array.values[i], w,
			    depth + 1);
	} else if (YAJL_IS_STRING(v)) {
		s = YAJL_GET_STRING(v);
		len = strlen(s);
		if (len == 0 || len > PHONE_INPUT_MAX ||
		    s[strspn(s, " ")] != '+' || strpbrk(s, "*Xx") != NULL)
			return;
		h = &w->hint[w->n++];
		h->text = s;
		h->len = len;
		h->rv = phone_parse_uncached(s, len, NULL, h->e164);
	}
}

/* Back on the loop: nothing to do (the request may be done already). */
static void
logstream_warm_done(void *arg, int cancelled)
{
	(void)arg;
	(void)cancelled;
}

/* On the worker: free a request's trees and items. */
static void
logstream_free_work(void *arg)
{
	struct logstream_job	*j = arg;

	logstream_batch_free(&j->b);
}

/* Back on the loop (or cancelled, freed or not): free the rest. */
static void
logstream_free_done(void *arg, int cancelled)
{
	struct logstream_job	*j = arg;

	(void)cancelled;
	logstream_batch_free(&j->b);
	if (j->body != NULL)
		evbuffer_free(j->body);
	free(j);
}

/* Take a request off the queue and free it, unanswered. */
static void
logstream_job_free(struct logstream_job *j)
{
	TAILQ_REMOVE(&logstream_jobs, j, entry);
	logstream_free_done(j, 1);
}

/* Forget up to a batch of log ids seen more than retention seconds ago. */
static int
logstream_prune_txn(struct store_txn *txn, void *arg)
{
	int64_t	*a = arg;
	size_t	 n;
	int	 rv;

	rv = store_seen_prune(txn, a[0], LOGSTREAM_PRUNE_BATCH, &n);
	a[1] = (int64_t)n;
	return (rv);
}

/* Prune seen log ids older than retention; *pruned says how many went. */
int
logstream_prune(int64_t now, int64_t retention, size_t *pruned)
{
	int64_t	a[2] = { now - retention, 0 };
	int	rv;

	rv = claims_run(logstream_prune_txn, a);
	*pruned = rv == STORE_OK ? (size_t)a[1] : 0;
	return (rv);
}

/* Read the stored highest log id. */
static int
logstream_last_txn(struct store_txn *txn, void *arg)
{
	char	**out = arg;

	free(*out);
	*out = NULL;
	return (store_meta_get(txn, LOGSTREAM_META_LAST, out));
}

/* The highest log id applied, in *out (NULL if none yet); a STORE_ code. */
int
logstream_last_id(char **out)
{
	int	rv;

	*out = NULL;
	rv = claims_run(logstream_last_txn, out);
	if (rv == STORE_NOTFOUND) {
		*out = NULL;
		return (STORE_OK);
	}
	return (rv);
}
