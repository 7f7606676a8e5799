/*
 * Counters for GET /metrics, in Prometheus text exposition format 0.0.4:
 * answers by endpoint and status with their latency, log-stream events by
 * outcome, and gauges read from the store when scraped.
 *
 * Nothing here may name a number, a user or a token (invariant I5): the
 * labels are endpoints, status codes, outcomes, Auth0 event types and the
 * version.  Counters live in memory and start from zero with the process,
 * as Prometheus expects of counters (rate() handles the reset).
 */
#include "config.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/http.h>

#include "log.h"
#include "phone.h"
#include "phoneclaimd.h"
#include "xmalloc.h"

#define METRICS_CONTENT_TYPE	"text/plain; version=0.0.4; charset=utf-8"
#define METRICS_CODE_MIN	100
#define METRICS_CODE_MAX	599
#define METRICS_NCODES		(METRICS_CODE_MAX - METRICS_CODE_MIN + 1)
#define METRICS_TYPE_MAX	64	/* bytes of an event type shown */
#define METRICS_TYPE_DIGITS	4	/* digits in a row that hide a type */
#define METRICS_TYPE_OTHER	"(other)"

/* Upper bounds of the latency buckets ("le" includes the bound). */
static const struct {
	int64_t		 usec;
	const char	*le;
} metrics_buckets[] = {
	{ 500, "0.0005" }, { 1000, "0.001" }, { 2500, "0.0025" },
	{ 5000, "0.005" }, { 10000, "0.01" }, { 25000, "0.025" },
	{ 50000, "0.05" }, { 100000, "0.1" }, { 250000, "0.25" },
	{ 500000, "0.5" }, { 1000000, "1" }, { 2500000, "2.5" }
};
#define METRICS_NBUCKETS \
    (sizeof metrics_buckets / sizeof metrics_buckets[0])

static const char	*metrics_endpoints[METRICS_EP_COUNT] = {
	"claims", "log-stream", "healthz", "metrics", "other"
};

/* One endpoint's latency histogram; +Inf is the count. */
struct metrics_latency {
	uint64_t	 bucket[METRICS_NBUCKETS];	/* not cumulative */
	uint64_t	 count;
	uint64_t	 sum_usec;
};

struct metrics {
	struct store		*store;
	int64_t			 start;		/* seconds since the epoch */
	uint64_t		 requests[METRICS_EP_COUNT][METRICS_NCODES];
	struct metrics_latency	 latency[METRICS_EP_COUNT];
	struct metrics_events	 events;
	uint64_t		 conns_closed;	/* to make room */
};

static struct metrics	 metrics;

static int	metrics_later(const char *, const char *);
static void	metrics_family(struct evbuffer *, const char *, const char *,
		    const char *);
static void	metrics_label(struct evbuffer *, const char *);
static void	metrics_one(struct evbuffer *, const char *, const char *,
		    const char *, unsigned long long);
static int	metrics_type_shown(const char *);
static void	metrics_text_process(struct evbuffer *);
static void	metrics_text_backfill(struct evbuffer *);
static void	metrics_text_phone(struct evbuffer *);
static void	metrics_text_conns(struct evbuffer *);
static void	metrics_text_repl(struct evbuffer *);
static void	metrics_text_clock(struct evbuffer *, const struct repl_info *);
static void	metrics_text_reconcile(struct evbuffer *);
static void	metrics_text_bootstrap(struct evbuffer *);
static void	metrics_text_verify(struct evbuffer *,
		    const struct mgmt_status *);
static void	metrics_text_store(struct evbuffer *);
static void	metrics_text_events(struct evbuffer *);
static void	metrics_text_ignored(struct evbuffer *);
static void	metrics_text_last_event(struct evbuffer *);
static void	metrics_text_requests(struct evbuffer *);
static void	metrics_text_latency(struct evbuffer *);

/* Start counting; the store is read for the gauges at each scrape. */
void
metrics_init(struct store *store)
{
	memset(&metrics, 0, sizeof metrics);
	metrics.store = store;
	metrics.start = (int64_t)time(NULL);
}

/* Forget the counters and the store. */
void
metrics_free(void)
{
	memset(&metrics, 0, sizeof metrics);
}

/* Count one answer handed to evhttp, usec after its request arrived. */
void
metrics_request(int endpoint, int code, int64_t usec)
{
	struct metrics_latency	*l;
	size_t			 i;

	if (endpoint < 0 || endpoint >= METRICS_EP_COUNT)
		endpoint = METRICS_EP_OTHER;
	/* Not an HTTP status: evhttp would not send it either. */
	if (code >= METRICS_CODE_MIN && code <= METRICS_CODE_MAX)
		metrics.requests[endpoint][code - METRICS_CODE_MIN]++;
	if (usec < 0)
		usec = 0;
	l = &metrics.latency[endpoint];
	for (i = 0; i < METRICS_NBUCKETS; i++) {
		if (usec <= metrics_buckets[i].usec) {
			l->bucket[i]++;
			break;
		}
	}
	l->count++;
	l->sum_usec += (uint64_t)usec;
}

/* Return 1 if log id a comes after b, in logstream.c's order. */
static int
metrics_later(const char *a, const char *b)
{
	size_t	la = strlen(a), lb = strlen(b);

	if (la != lb)
		return (la > lb);
	return (strcmp(a, b) > 0);
}

/* Add one committed log-stream request's counts to the totals. */
void
metrics_log_stream(const struct metrics_events *d)
{
	struct metrics_events	*t = &metrics.events;

	t->applied += d->applied;
	t->duplicates += d->duplicates;
	t->ignored += d->ignored;
	t->rejected += d->rejected;
	t->unmatched += d->unmatched;
	t->ambiguous += d->ambiguous;
	t->stale += d->stale;
	/* One event's id and date: the latest by date, then the later id. */
	if (d->last_date_ms > t->last_date_ms || (d->last_date_ms > 0 &&
	    d->last_date_ms == t->last_date_ms &&
	    metrics_later(d->last_log_id, t->last_log_id))) {
		t->last_date_ms = d->last_date_ms;
		snprintf(t->last_log_id, sizeof t->last_log_id, "%s",
		    d->last_log_id);
	}
	if (d->last_received > t->last_received)
		t->last_received = d->last_received;
}

/* Return the log-stream totals since start (for status too). */
const struct metrics_events *
metrics_events_totals(void)
{
	return (&metrics.events);
}

/* Write a family's HELP and TYPE lines. */
static void
metrics_family(struct evbuffer *buf, const char *name, const char *type,
    const char *help)
{
	evbuffer_add_printf(buf, "# HELP phoneclaimd_%s %s\n"
	    "# TYPE phoneclaimd_%s %s\n", name, help, name, type);
}

/* A family of one sample without labels: phoneclaimd_<name> v. */
static void
metrics_one(struct evbuffer *buf, const char *name, const char *type,
    const char *help, unsigned long long v)
{
	metrics_family(buf, name, type, help);
	evbuffer_add_printf(buf, "phoneclaimd_%s %llu\n", name, v);
}

/* Write a label value escaped as the format wants: \\, \" and \n. */
static void
metrics_label(struct evbuffer *buf, const char *s)
{
	for (; *s != '\0'; s++) {
		if (*s == '\\')
			evbuffer_add(buf, "\\\\", 2);
		else if (*s == '"')
			evbuffer_add(buf, "\\\"", 2);
		else if (*s == '\n')
			evbuffer_add(buf, "\\n", 2);
		else
			evbuffer_add(buf, s, 1);
	}
}

/*
 * Show an event type as a label only if it looks like an Auth0 type code:
 * printable ASCII (so the output stays UTF-8), and no run of digits that
 * could be part of a phone number sent in the type field.  The others are
 * counted together as "(other)".
 */
static int
metrics_type_shown(const char *type)
{
	const unsigned char	*s = (const unsigned char *)type;
	size_t			 len = strlen(type), i, run = 0;

	if (len == 0 || len > METRICS_TYPE_MAX ||
	    strcmp(type, METRICS_TYPE_OTHER) == 0)
		return (0);
	for (i = 0; i < len; i++) {
		if (s[i] < 0x20 || s[i] > 0x7e)
			return (0);
		run = s[i] >= '0' && s[i] <= '9' ? run + 1 : 0;
		if (run >= METRICS_TYPE_DIGITS)
			return (0);
	}
	return (1);
}

/* The process: version, start time, store health, backfill. */
static void
metrics_text_process(struct evbuffer *buf)
{
	int	ok = metrics.store != NULL && !store_failed(metrics.store);

	metrics_family(buf, "build_info", "gauge",
	    "Always 1; the version is in the label.");
	evbuffer_add_printf(buf, "phoneclaimd_build_info{version=\"");
	metrics_label(buf, PACKAGE_VERSION);
	evbuffer_add_printf(buf, "\"} 1\n");
	metrics_family(buf, "start_time_seconds", "gauge",
	    "When the daemon started, in seconds since the epoch.");
	evbuffer_add_printf(buf, "phoneclaimd_start_time_seconds %" PRId64
	    "\n", metrics.start);
	metrics_family(buf, "store_ok", "gauge",
	    "1 while the store accepts commits, else 0.");
	evbuffer_add_printf(buf, "phoneclaimd_store_ok %d\n", ok);
	metrics_text_backfill(buf);
	metrics_text_phone(buf);
	metrics_text_conns(buf);
	metrics_text_repl(buf);
}

/* Replication, in a group only: role, master, peers, lag, forwarding. */
static void
metrics_text_repl(struct evbuffer *buf)
{
	struct repl_info	ri;
	size_t			i;

	repl_info(&ri);
	if (!ri.enabled)
		return;
	metrics_family(buf, "repl_role", "gauge",
	    "1 for this node's replication role.");
	evbuffer_add_printf(buf, "phoneclaimd_repl_role{role=\"%s\"} 1\n",
	    repl_role_name(ri.role));
	metrics_family(buf, "repl_master", "gauge",
	    "1 with the master's replication address; absent without one.");
	if (ri.master[0] != '\0') {
		evbuffer_add_printf(buf, "phoneclaimd_repl_master{address=\"");
		metrics_label(buf, ri.master);
		evbuffer_add_printf(buf, "\"} 1\n");
	}
	metrics_family(buf, "repl_peer_connected", "gauge",
	    "1 while connected to the peer, else 0.");
	for (i = 0; i < ri.npeers; i++) {
		evbuffer_add_printf(buf,
		    "phoneclaimd_repl_peer_connected{address=\"");
		metrics_label(buf, ri.peers[i].repl);
		evbuffer_add_printf(buf, "\"} %d\n", ri.peers[i].connected);
	}
	metrics_one(buf, "repl_lag_records", "gauge",
	    "Log records received and waiting to be applied (a replica).",
	    ri.lag);
	metrics_one(buf, "repl_lsn_file", "gauge",
	    "The log file of this node's next log record: compare nodes.",
	    ri.lsn_file);
	metrics_one(buf, "repl_lsn_offset", "gauge",
	    "The offset of this node's next log record in its log file.",
	    ri.lsn_offset);
	metrics_one(buf, "repl_perm_failed_total", "counter",
	    "Commits too few replicas acknowledged (answered 503).",
	    ri.perm_failed);
	metrics_one(buf, "repl_ack_waits_total", "counter",
	    "Rounds of acknowledgements the master waited for; each covers "
	    "every commit before it.", ri.ack_waits);
	metrics_family(buf, "repl_forwarded_total", "counter",
	    "Writes forwarded to the master, by outcome.");
	evbuffer_add_printf(buf,
	    "phoneclaimd_repl_forwarded_total{outcome=\"relayed\"} %llu\n"
	    "phoneclaimd_repl_forwarded_total{outcome=\"failed\"} %llu\n"
	    "phoneclaimd_repl_forwarded_total{outcome=\"no_master\"} %llu\n",
	    (unsigned long long)ri.forwarded,
	    (unsigned long long)ri.forward_failed,
	    (unsigned long long)ri.unavailable);
	metrics_one(buf, "repl_forward_resent_total", "counter",
	    "Forwarded writes sent again, to a newly elected master.",
	    ri.resent);
	metrics_one(buf, "repl_forward_batches_total", "counter",
	    "Batches of claims forwarded to the master in one request.",
	    ri.batches);
	metrics_one(buf, "repl_forward_batched_total", "counter",
	    "Claims forwarded in those batches.", ri.batched);
	metrics_text_clock(buf, &ri);
}

/* The clocks: this member's verdict, and each peer's skew. */
static void
metrics_text_clock(struct evbuffer *buf, const struct repl_info *ri)
{
	size_t	i;

	metrics_family(buf, "repl_clock_state", "gauge",
	    "1 for the verdict on this member's clock: ok, off or unchecked.");
	evbuffer_add_printf(buf,
	    "phoneclaimd_repl_clock_state{state=\"%s\"} 1\n",
	    repl_clock_name(ri->clock));
	metrics_family(buf, "repl_clock_skew_seconds", "gauge",
	    "The peer's clock minus this member's; absent until measured.");
	for (i = 0; i < ri->npeers; i++) {
		if (!ri->peers[i].skew_known)
			continue;
		evbuffer_add_printf(buf,
		    "phoneclaimd_repl_clock_skew_seconds{address=\"");
		metrics_label(buf, ri->peers[i].repl);
		evbuffer_add_printf(buf, "\"} %.3f\n",
		    (double)ri->peers[i].skew / 1000);
	}
}

/* The Management API backfill: its state and counters. */
static void
metrics_text_backfill(struct evbuffer *buf)
{
	const struct mgmt_status	*st = mgmt_status();

	metrics_family(buf, "backfill_state", "gauge",
	    "Management API backfill: 0 disabled, 1 idle, 2 running, "
	    "3 failing.");
	evbuffer_add_printf(buf, "phoneclaimd_backfill_state %d\n", st->state);
	if (st->state == MGMT_DISABLED)
		return;
	metrics_family(buf, "backfill_pages_total", "counter",
	    "Pages of logs fetched by the backfill.");
	evbuffer_add_printf(buf, "phoneclaimd_backfill_pages_total %llu\n",
	    (unsigned long long)st->total_pages);
	metrics_family(buf, "backfill_events_total", "counter",
	    "Events received by the backfill (applied or duplicate).");
	evbuffer_add_printf(buf, "phoneclaimd_backfill_events_total %llu\n",
	    (unsigned long long)st->total_events);
	metrics_family(buf, "backfill_failures_total", "counter",
	    "Failed Management API requests (each retried).");
	evbuffer_add_printf(buf, "phoneclaimd_backfill_failures_total %llu\n",
	    (unsigned long long)st->failures);
	metrics_family(buf, "backfill_last_run_seconds", "gauge",
	    "When the last complete backfill ended, or 0.");
	evbuffer_add_printf(buf, "phoneclaimd_backfill_last_run_seconds %lld\n",
	    (long long)st->last_run);
	metrics_text_verify(buf, st);
	metrics_text_reconcile(buf);
	metrics_text_bootstrap(buf);
}

/* Reconciliation against the Management API (reconcile.c). */
static void
metrics_text_reconcile(struct evbuffer *buf)
{
	const struct reconcile_status	*r = reconcile_status();
	double				 progress = 0;

	if (!r->configured)
		return;
	if (r->running && r->pass_total > 0)
		progress = r->pass_checked >= r->pass_total ? 1 :
		    (double)r->pass_checked / (double)r->pass_total;
	else if (r->running || r->last_pass != 0)
		progress = r->running ? 0 : 1;
	metrics_family(buf, "reconcile_total", "counter",
	    "Reconciliation since start: active claims checked, and what "
	    "the answers changed.");
	evbuffer_add_printf(buf,
	    "phoneclaimd_reconcile_total{result=\"checked\"} %llu\n"
	    "phoneclaimd_reconcile_total{result=\"released\"} %llu\n"
	    "phoneclaimd_reconcile_total{result=\"learned\"} %llu\n"
	    "phoneclaimd_reconcile_total{result=\"conflict\"} %llu\n"
	    "phoneclaimd_reconcile_total{result=\"unsettled\"} %llu\n"
	    "phoneclaimd_reconcile_total{result=\"missing\"} %llu\n",
	    (unsigned long long)r->checked, (unsigned long long)r->released,
	    (unsigned long long)r->learned, (unsigned long long)r->conflicts,
	    (unsigned long long)r->unsettled, (unsigned long long)r->missing);
	metrics_family(buf, "reconcile_failures_total", "counter",
	    "Failed reconciliation requests (each retried).");
	evbuffer_add_printf(buf, "phoneclaimd_reconcile_failures_total %llu\n",
	    (unsigned long long)r->failures);
	metrics_family(buf, "reconcile_passes_total", "counter",
	    "Complete reconciliation passes since start.");
	evbuffer_add_printf(buf, "phoneclaimd_reconcile_passes_total %llu\n",
	    (unsigned long long)r->passes);
	metrics_family(buf, "reconcile_pass_progress", "gauge",
	    "Share of the active claims the current pass has checked (1: "
	    "the last pass is complete, 0: none yet).");
	evbuffer_add_printf(buf, "phoneclaimd_reconcile_pass_progress %g\n",
	    progress);
	metrics_family(buf, "reconcile_last_pass_seconds", "gauge",
	    "When the last complete pass ended, or 0.");
	evbuffer_add_printf(buf, "phoneclaimd_reconcile_last_pass_seconds "
	    "%lld\n", (long long)r->last_pass);
}

/* The bootstrap of a new deployment (bootstrap.c). */
static void
metrics_text_bootstrap(struct evbuffer *buf)
{
	const struct bootstrap_status	*b = bootstrap_status();
	double				 progress = 0;
	int				 running;

	if (!b->configured)
		return;
	running = strcmp(b->state, "running") == 0;
	if (strcmp(b->state, "done") == 0)
		progress = 1;
	else if (b->total > 0)
		progress = b->checked >= b->total ? 1 :
		    (double)b->checked / (double)b->total;
	metrics_family(buf, "bootstrap_running", "gauge",
	    "1 while phoneclaimctl bootstrap runs.");
	evbuffer_add_printf(buf, "phoneclaimd_bootstrap_running %d\n",
	    running);
	metrics_family(buf, "bootstrap_users", "gauge",
	    "The current or last bootstrap: users checked, and what their "
	    "phone methods came to.");
	evbuffer_add_printf(buf,
	    "phoneclaimd_bootstrap_users{result=\"listed\"} %llu\n"
	    "phoneclaimd_bootstrap_users{result=\"checked\"} %llu\n"
	    "phoneclaimd_bootstrap_users{result=\"missing\"} %llu\n"
	    "phoneclaimd_bootstrap_users{result=\"refused\"} %llu\n",
	    (unsigned long long)b->total, (unsigned long long)b->checked,
	    (unsigned long long)b->missing, (unsigned long long)b->refused);
	metrics_family(buf, "bootstrap_phones", "gauge",
	    "The current or last bootstrap: phone numbers claimed, found "
	    "held by another user (conflicts), known already, or masked.");
	evbuffer_add_printf(buf,
	    "phoneclaimd_bootstrap_phones{result=\"claimed\"} %llu\n"
	    "phoneclaimd_bootstrap_phones{result=\"conflict\"} %llu\n"
	    "phoneclaimd_bootstrap_phones{result=\"known\"} %llu\n"
	    "phoneclaimd_bootstrap_phones{result=\"masked\"} %llu\n",
	    (unsigned long long)b->claimed, (unsigned long long)b->conflicts,
	    (unsigned long long)b->known, (unsigned long long)b->masked);
	metrics_family(buf, "bootstrap_progress", "gauge",
	    "Share of the listed users the bootstrap has checked (1: done).");
	evbuffer_add_printf(buf, "phoneclaimd_bootstrap_progress %g\n",
	    progress);
	metrics_family(buf, "bootstrap_failures_total", "counter",
	    "Failed bootstrap requests since start (each retried).");
	evbuffer_add_printf(buf, "phoneclaimd_bootstrap_failures_total %llu\n",
	    (unsigned long long)b->failures);
}

/* The number normaliser's cache. */
static void
metrics_text_phone(struct evbuffer *buf)
{
	uint64_t	hits, misses;

	phone_cache_stats(&hits, &misses);
	metrics_family(buf, "phone_cache_total", "counter",
	    "Phone numbers normalised, answered by the cache (hit) or by "
	    "libphonenumber (miss).");
	evbuffer_add_printf(buf,
	    "phoneclaimd_phone_cache_total{result=\"hit\"} %llu\n"
	    "phoneclaimd_phone_cache_total{result=\"miss\"} %llu\n",
	    (unsigned long long)hits, (unsigned long long)misses);
}

/* Count a connection closed because max_connections were open. */
void
metrics_connection_closed(void)
{
	metrics.conns_closed++;
}

/* Connections closed to make room for new ones. */
static void
metrics_text_conns(struct evbuffer *buf)
{
	metrics_family(buf, "connections_closed_total", "counter",
	    "Connections closed because max_connections were open.");
	evbuffer_add_printf(buf, "phoneclaimd_connections_closed_total %llu\n",
	    (unsigned long long)metrics.conns_closed);
}

/* Verifications and conflict removals through the Management API. */
static void
metrics_text_verify(struct evbuffer *buf, const struct mgmt_status *st)
{
	struct store_counts	counts;

	if (metrics.store != NULL &&
	    store_count(metrics.store, &counts) == STORE_OK) {
		metrics_family(buf, "verify_waiting", "gauge",
		    "Users waiting for a verification of their phone methods.");
		evbuffer_add_printf(buf, "phoneclaimd_verify_waiting %llu\n",
		    (unsigned long long)counts.verify);
	}
	metrics_family(buf, "verify_total", "counter",
	    "Verifications done, by what they changed (a verification can "
	    "count in several).");
	evbuffer_add_printf(buf,
	    "phoneclaimd_verify_total{result=\"done\"} %llu\n"
	    "phoneclaimd_verify_total{result=\"activated\"} %llu\n"
	    "phoneclaimd_verify_total{result=\"claimed\"} %llu\n"
	    "phoneclaimd_verify_total{result=\"released\"} %llu\n"
	    "phoneclaimd_verify_total{result=\"unsettled\"} %llu\n"
	    "phoneclaimd_verify_total{result=\"dropped\"} %llu\n"
	    "phoneclaimd_verify_total{result=\"refused\"} %llu\n"
	    "phoneclaimd_verify_total{result=\"gave_up\"} %llu\n",
	    (unsigned long long)st->v_done,
	    (unsigned long long)st->v_activated,
	    (unsigned long long)st->v_claimed,
	    (unsigned long long)st->v_released,
	    (unsigned long long)st->v_unsettled,
	    (unsigned long long)st->v_dropped,
	    (unsigned long long)verify_refused_total(),
	    (unsigned long long)st->v_gave_up);
	metrics_family(buf, "verify_failures_total", "counter",
	    "Failed verification requests (each retried).");
	evbuffer_add_printf(buf, "phoneclaimd_verify_failures_total %llu\n",
	    (unsigned long long)st->v_failures);
	metrics_family(buf, "conflict_removals_total", "counter",
	    "Phone methods deleted for on_conflict = remove, by outcome.");
	evbuffer_add_printf(buf,
	    "phoneclaimd_conflict_removals_total{result=\"removed\"} %llu\n"
	    "phoneclaimd_conflict_removals_total{result=\"absent\"} %llu\n"
	    "phoneclaimd_conflict_removals_total{result=\"refused\"} %llu\n",
	    (unsigned long long)st->rm_done,
	    (unsigned long long)st->rm_absent,
	    (unsigned long long)st->rm_refused);
	metrics_family(buf, "conflict_removal_failures_total", "counter",
	    "Failed removal requests (each retried).");
	evbuffer_add_printf(buf,
	    "phoneclaimd_conflict_removal_failures_total %llu\n",
	    (unsigned long long)st->rm_failures);
}

/* Claims by state and conflicts, from the store (no samples if it fails). */
static void
metrics_text_store(struct evbuffer *buf)
{
	struct store_counts	c;
	int			ok;

	ok = metrics.store != NULL && store_count(metrics.store, &c) ==
	    STORE_OK;
	metrics_family(buf, "claims", "gauge",
	    "Claims held, by state (expired reservations until purged).");
	if (ok)
		evbuffer_add_printf(buf,
		    "phoneclaimd_claims{state=\"active\"} %" PRIu64 "\n"
		    "phoneclaimd_claims{state=\"pending\"} %" PRIu64 "\n",
		    c.active, c.pending);
	metrics_family(buf, "conflicts", "gauge",
	    "Conflicts recorded: more holders than allowed on one number.");
	if (ok)
		evbuffer_add_printf(buf, "phoneclaimd_conflicts %" PRIu64 "\n",
		    c.conflicts);
	metrics_family(buf, "conflicts_resolved_total", "counter",
	    "Conflicts resolved since start: the holders of the number left "
	    "and the conflict's user became its holder.");
	evbuffer_add_printf(buf, "phoneclaimd_conflicts_resolved_total %"
	    PRIu64 "\n", claims_resolved_total());
}

/* Log-stream events by outcome; the outcomes add up to those received. */
static void
metrics_text_events(struct evbuffer *buf)
{
	const struct metrics_events	*e = &metrics.events;
	uint64_t			 plain = metrics_ignored_other(e);

	metrics_family(buf, "events_total", "counter",
	    "Log-stream events since start by outcome; ignored excludes "
	    "unmatched, ambiguous and stale.");
	evbuffer_add_printf(buf,
	    "phoneclaimd_events_total{outcome=\"applied\"} %" PRIu64 "\n"
	    "phoneclaimd_events_total{outcome=\"duplicate\"} %" PRIu64 "\n"
	    "phoneclaimd_events_total{outcome=\"ignored\"} %" PRIu64 "\n"
	    "phoneclaimd_events_total{outcome=\"rejected\"} %" PRIu64 "\n"
	    "phoneclaimd_events_total{outcome=\"unmatched\"} %" PRIu64 "\n"
	    "phoneclaimd_events_total{outcome=\"ambiguous\"} %" PRIu64 "\n"
	    "phoneclaimd_events_total{outcome=\"stale\"} %" PRIu64 "\n",
	    e->applied, e->duplicates, plain, e->rejected, e->unmatched,
	    e->ambiguous, e->stale);
	metrics_family(buf, "undated_events_total", "counter",
	    "Log-stream events without a readable date since start: dated at "
	    "their arrival, they may release but never bring back a released "
	    "claim.");
	evbuffer_add_printf(buf, "phoneclaimd_undated_events_total %" PRIu64
	    "\n", events_undated_total());
	metrics_family(buf, "unreadable_events_total", "counter",
	    "Log-stream events since start whose phone number could not be "
	    "read (masked with no digit, hashed, no country code): matched "
	    "as events without a number, whatever their outcome.");
	evbuffer_add_printf(buf, "phoneclaimd_unreadable_events_total %" PRIu64
	    "\n", events_unreadable_total());
}

/*
 * The events that changed nothing for another reason than unmatched,
 * ambiguous or stale (types not acted on, other factors): "ignored" in
 * /metrics and status, where each event has one outcome.  The log-stream
 * answer's "ignored" is the sum of the four.
 */
uint64_t
metrics_ignored_other(const struct metrics_events *e)
{
	uint64_t	other = e->unmatched + e->ambiguous + e->stale;

	return (e->ignored > other ? e->ignored - other : 0);
}

/* Ignored events by Auth0 type. */
static void
metrics_text_ignored(struct evbuffer *buf)
{
	const char	**names;
	const size_t	 *counts;
	size_t		  n, i;
	uint64_t	  other = 0;

	n = events_ignored_types(&names, &counts);
	metrics_family(buf, "ignored_events_total", "counter",
	    "Log-stream events of a type that changes no claim, by type.");
	for (i = 0; i < n; i++) {
		if (!metrics_type_shown(names[i])) {
			other += counts[i];
			continue;
		}
		evbuffer_add_printf(buf,
		    "phoneclaimd_ignored_events_total{type=\"");
		metrics_label(buf, names[i]);
		evbuffer_add_printf(buf, "\"} %zu\n", counts[i]);
	}
	if (other > 0)
		evbuffer_add_printf(buf, "phoneclaimd_ignored_events_total"
		    "{type=\"" METRICS_TYPE_OTHER "\"} %" PRIu64 "\n", other);
}

/* The latest event's date and how long ago one arrived (none: absent). */
static void
metrics_text_last_event(struct evbuffer *buf)
{
	const struct metrics_events	*e = &metrics.events;
	int64_t				 age;

	metrics_family(buf, "last_event_timestamp_seconds", "gauge",
	    "Date of the latest new log-stream event, in seconds since the "
	    "epoch; absent before any.");
	if (e->last_date_ms > 0)
		evbuffer_add_printf(buf, "phoneclaimd_last_event_timestamp_"
		    "seconds %" PRId64 ".%03d\n", e->last_date_ms / 1000,
		    (int)(e->last_date_ms % 1000));
	metrics_family(buf, "last_event_age_seconds", "gauge",
	    "Seconds since a log-stream request brought a new event; absent "
	    "before any.");
	if (e->last_received > 0) {
		age = (int64_t)time(NULL) - e->last_received;
		evbuffer_add_printf(buf, "phoneclaimd_last_event_age_seconds %"
		    PRId64 "\n", age > 0 ? age : 0);
	}
}

/* Answers by endpoint and status code (only those that happened). */
static void
metrics_text_requests(struct evbuffer *buf)
{
	int	ep, i;

	metrics_family(buf, "requests_total", "counter",
	    "HTTP answers sent, by endpoint and status code.");
	for (ep = 0; ep < METRICS_EP_COUNT; ep++) {
		for (i = 0; i < METRICS_NCODES; i++) {
			if (metrics.requests[ep][i] == 0)
				continue;
			evbuffer_add_printf(buf, "phoneclaimd_requests_total"
			    "{endpoint=\"%s\",code=\"%d\"} %" PRIu64 "\n",
			    metrics_endpoints[ep], i + METRICS_CODE_MIN,
			    metrics.requests[ep][i]);
		}
	}
}

/* The latency histogram of each endpoint, buckets made cumulative. */
static void
metrics_text_latency(struct evbuffer *buf)
{
	const struct metrics_latency	*l;
	const char			*name;
	uint64_t			 cum;
	size_t				 i;
	int				 ep;

	metrics_family(buf, "request_duration_seconds", "histogram",
	    "Time from a request's arrival to its answer, by endpoint.");
	for (ep = 0; ep < METRICS_EP_COUNT; ep++) {
		l = &metrics.latency[ep];
		name = metrics_endpoints[ep];
		for (i = 0, cum = 0; i < METRICS_NBUCKETS; i++) {
			cum += l->bucket[i];
			evbuffer_add_printf(buf, "phoneclaimd_request_duration_"
			    "seconds_bucket{endpoint=\"%s\",le=\"%s\"} %"
			    PRIu64 "\n", name, metrics_buckets[i].le, cum);
		}
		evbuffer_add_printf(buf, "phoneclaimd_request_duration_seconds_"
		    "bucket{endpoint=\"%s\",le=\"+Inf\"} %" PRIu64 "\n",
		    name, l->count);
		evbuffer_add_printf(buf, "phoneclaimd_request_duration_seconds_"
		    "sum{endpoint=\"%s\"} %.6f\n", name,
		    (double)l->sum_usec / 1e6);
		evbuffer_add_printf(buf, "phoneclaimd_request_duration_seconds_"
		    "count{endpoint=\"%s\"} %" PRIu64 "\n", name, l->count);
	}
}

/* Return the whole exposition as a string to free. */
char *
metrics_text(void)
{
	struct evbuffer	*buf;
	size_t		 len;
	char		*text;

	if ((buf = evbuffer_new()) == NULL)
		fatalx("evbuffer_new");
	metrics_text_process(buf);
	metrics_text_store(buf);
	metrics_text_events(buf);
	metrics_text_ignored(buf);
	metrics_text_last_event(buf);
	metrics_text_requests(buf);
	metrics_text_latency(buf);
	len = evbuffer_get_length(buf);
	text = xmalloc(len + 1);
	if (evbuffer_remove(buf, text, len) != (int)len)
		fatalx("evbuffer_remove");
	text[len] = '\0';
	evbuffer_free(buf);
	return (text);
}

/*
 * GET /metrics.  It changes nothing, so it is sent at once rather than
 * after the log flush: a scrape still answers (with store_ok 0) when the
 * store has failed and every flush does.
 */
void
metrics_http_cb(struct evhttp_request *req, void *arg)
{
	struct http	*h = arg;
	char		*text;

	text = metrics_text();
	http_reply_now(h, req, 200, METRICS_CONTENT_TYPE, text);
	free(text);
}
