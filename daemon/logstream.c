/*
 * POST /v1/log-stream: Auth0's Custom Webhook log stream.  The body is a
 * JSON array of items, JSON Lines, or one item; an item is {log_id, data}
 * or a bare event.  Items are checked first (bad ones are rejected and
 * kept, redacted, in the dead-letter file), then the whole request is
 * applied in one transaction: each log id is remembered as seen with the
 * event's effects, so a redelivery changes nothing (invariant I3).  The
 * answer waits for the log flush like every other answer.  The
 * Management API backfill (mgmt.c) applies its pages through the same
 * logstream_ingest.
 */
#include "config.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/http.h>
#include <yajl/yajl_tree.h>

#include "log.h"
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

struct logstream_item {
	yajl_val	 root;		/* tree to free, or NULL if shared */
	yajl_val	 data;		/* the event */
	const char	*log_id;
	int		 ignored;	/* changed nothing: count its type */
	int		 undated;	/* applied, without a readable date */
	const char	*unreadable;	/* why its number is unreadable */
};

/* A rejected item, kept until the request is committed. */
struct logstream_reject {
	const char	*reason;
	char		*log_id;
	char		*text;
	size_t		 len;
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
	size_t			 applied;
	size_t			 duplicates;
	size_t			 unreadable;	/* numbers that cannot be read */
	struct events_counts	 ignored;
	char			 last[LOG_ID_MAX + 1];
	char			 latest[LOG_ID_MAX + 1]; /* by date, */
	int64_t			 last_date;	/* and its date (ms) */
};

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
static int	logstream_txn(struct store_txn *, void *);
static int	logstream_apply_one(struct store_txn *,
		    struct logstream_batch *, struct logstream_item *);
static int	logstream_prune_txn(struct store_txn *, void *);
static int	logstream_last_txn(struct store_txn *, void *);
static void	logstream_free(struct logstream_batch *);
static void	logstream_count_unreadable(const struct logstream_item *);
static void	logstream_metrics(const struct logstream_batch *, size_t);
static void	logstream_result(const struct logstream_batch *, const char *,
		    struct logstream_result *);

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

/* Apply one checked item: seen before, or its effects. */
static int
logstream_apply_one(struct store_txn *txn, struct logstream_batch *b,
    struct logstream_item *it)
{
	const char	*user;
	int64_t		 date;
	int		 rv, outcome;

	rv = store_seen_add(txn, it->log_id, b->now);
	it->ignored = it->undated = 0;
	it->unreadable = NULL;
	if (rv == STORE_EXISTS) {
		b->duplicates++;
		return (STORE_OK);
	}
	if (rv != STORE_OK)
		return (rv);
	if ((rv = events_apply(txn, it->data, it->log_id, b->now_ms,
	    &outcome)) != STORE_OK)
		return (rv);
	it->undated = events_date(it->data, INT64_MIN) == INT64_MIN;
	it->unreadable = events_unreadable(it->data, &user);
	if (it->unreadable != NULL)
		b->unreadable++;
	if (logstream_later(it->log_id, b->last))
		snprintf(b->last, sizeof b->last, "%s", it->log_id);
	/* The latest by date (at one date, the later id), an undated none. */
	date = events_date(it->data, 0);
	if (date > b->last_date || (date > 0 && date == b->last_date &&
	    logstream_later(it->log_id, b->latest))) {
		b->last_date = date;
		snprintf(b->latest, sizeof b->latest, "%s", it->log_id);
	}
	switch (outcome) {
	case CLAIMS_APPLIED:
		b->applied++;
		break;
	case CLAIMS_UNMATCHED:
		b->ignored.unmatched++;
		break;
	case CLAIMS_AMBIGUOUS:
		b->ignored.ambiguous++;
		break;
	case CLAIMS_STALE:
		b->ignored.stale++;
		break;
	default:
		b->ignored.ignored++;
		it->ignored = 1;
		it->undated = 0;	/* nothing it could change */
		break;
	}
	return (STORE_OK);
}

/*
 * The whole request in one transaction (run again on deadlock).  The
 * highest log id applied or rejected is where a backfill resumes: a
 * rejected event is not fetched, rejected and dead-lettered again.
 */
static int
logstream_txn(struct store_txn *txn, void *arg)
{
	struct logstream_batch	*b = arg;
	const char		*cursor = b->last;
	char			*stored = NULL;
	size_t			 i;
	int			 rv = STORE_OK;

	b->applied = b->duplicates = b->unreadable = 0;
	memset(&b->ignored, 0, sizeof b->ignored);
	b->last[0] = b->latest[0] = '\0';
	b->last_date = 0;
	for (i = 0; i < b->nitems && rv == STORE_OK; i++)
		rv = logstream_apply_one(txn, b, &b->items[i]);
	for (i = 0; i < b->rejected; i++) {
		if (b->rejects[i].log_id != NULL &&
		    logstream_later(b->rejects[i].log_id, cursor))
			cursor = b->rejects[i].log_id;
	}
	if (rv != STORE_OK || cursor[0] == '\0')
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
	const char	*user, *why;

	if ((why = events_unreadable(it->data, &user)) != NULL)
		events_count_unreadable(it->log_id, user, why);
}

/* Free a batch's trees and items. */
static void
logstream_free(struct logstream_batch *b)
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
}

/* Add a committed request's counts and latest event to the metrics. */
static void
logstream_metrics(const struct logstream_batch *b, size_t ign)
{
	struct metrics_events	d;

	memset(&d, 0, sizeof d);
	d.applied = b->applied;
	d.duplicates = b->duplicates;
	d.ignored = ign;
	d.rejected = b->rejected;
	d.unmatched = b->ignored.unmatched;
	d.ambiguous = b->ignored.ambiguous;
	d.stale = b->ignored.stale;
	snprintf(d.last_log_id, sizeof d.last_log_id, "%s", b->latest);
	d.last_date_ms = b->last_date;
	/* Only a new event says that the stream is flowing. */
	if (b->last[0] != '\0')
		d.last_received = b->now;
	metrics_log_stream(&d);
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
	const char		*undated = NULL;
	size_t			 i, nundated = 0;
	int			 rv;

	memset(r, 0, sizeof *r);
	memset(&b, 0, sizeof b);
	b.now_ms = claims_clock_ms();
	b.now = b.now_ms / 1000;
	rv = logstream_parse(&b, body, len);
	if (rv == -2 || b.received > LOGSTREAM_MAX_ITEMS) {
		logstream_free(&b);
		log_warnx("%s: more than %d items in one request: refused",
		    source, LOGSTREAM_MAX_ITEMS);
		return (LOGSTREAM_TOO_MANY);
	}
	if (rv != 0) {
		logstream_free(&b);
		log_warnx("%s: body is not JSON (%zu bytes): kept in the "
		    "dead-letter file", source, len);
		deadletter_add("body is not JSON", NULL, body, len);
		return (LOGSTREAM_NOT_JSON);
	}
	if (!store_ok || claims_run(logstream_txn, &b) != STORE_OK) {
		logstream_free(&b);
		return (LOGSTREAM_UNAVAILABLE);
	}
	logstream_dead_letter(&b);
	/* Counted only now: a transaction run again must not count twice. */
	for (i = 0; i < b.nitems; i++) {
		if (b.items[i].ignored)
			events_count_ignored(events_type(b.items[i].data));
		if (b.items[i].undated && nundated++ == 0)
			undated = b.items[i].log_id;
		if (b.items[i].unreadable != NULL)
			logstream_count_unreadable(&b.items[i]);
	}
	events_count_undated(source, nundated, undated);
	logstream_free(&b);
	logstream_result(&b, source, r);
	return (LOGSTREAM_OK);
}

/* Fill the result of a committed batch, count it and log it. */
static void
logstream_result(const struct logstream_batch *b, const char *source,
    struct logstream_result *r)
{
	r->received = b->received;
	r->applied = b->applied;
	r->duplicates = b->duplicates;
	r->ignored = b->ignored.ignored + b->ignored.unmatched +
	    b->ignored.ambiguous + b->ignored.stale;
	r->rejected = b->rejected;
	snprintf(r->last, sizeof r->last, "%s", b->last);
	logstream_metrics(b, r->ignored);
	/* Doubts were queued for verification in the transaction. */
	if (b->ignored.unmatched + b->ignored.ambiguous > 0)
		mgmt_wake();
	log_info("%s: %zu received, %zu applied, %zu duplicate, "
	    "%zu ignored (%zu unmatched, %zu ambiguous, %zu older than a "
	    "release), %zu rejected; %zu with an unreadable number", source,
	    b->received, b->applied, b->duplicates, r->ignored,
	    b->ignored.unmatched, b->ignored.ambiguous, b->ignored.stale,
	    b->rejected, b->unreadable);
}

/* POST /v1/log-stream. */
void
logstream_http_cb(struct evhttp_request *req, void *arg)
{
	struct http		*h = arg;
	struct evbuffer		*buf = evhttp_request_get_input_buffer(req);
	struct logstream_result	 r;
	const char		*body;
	size_t			 len = evbuffer_get_length(buf);
	char			 answer[256];

	if (!http_authorised(h, req, HTTP_TOKEN_LOG_STREAM)) {
		http_error(h, req, 401, "unauthorized");
		return;
	}
	body = len > 0 ? (const char *)evbuffer_pullup(buf, -1) : "";
	switch (logstream_ingest("log stream", body, len, http_store_ok(h),
	    &r)) {
	case LOGSTREAM_TOO_MANY:
		http_error(h, req, 413, "body_too_large");
		return;
	case LOGSTREAM_NOT_JSON:
		http_error(h, req, 400, "invalid_json");
		return;
	case LOGSTREAM_UNAVAILABLE:
		http_error(h, req, 503, "unavailable");
		return;
	}
	snprintf(answer, sizeof answer, "{\"received\":%zu,\"applied\":%zu,"
	    "\"duplicates\":%zu,\"ignored\":%zu,\"rejected\":%zu}",
	    r.received, r.applied, r.duplicates, r.ignored, r.rejected);
	http_reply(h, req, 200, answer);
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
