/*
 * Replication: the clocks of the group's members.
 *
 * Reservations lapse by the master's wall clock.  A member whose clock
 * was an hour ahead, once elected, expired every pending reservation at
 * once (issue 22).  So a thread of its own (the clock thread) asks every
 * peer's API for GET /healthz each REPL_CLOCK_MS; the answer carries the
 * peer's clock in milliseconds (REPL_CLOCK_HEADER).  The peer read its
 * clock after the request had arrived and before the first byte of its
 * answer left, so between libcurl's "pretransfer" and "starttransfer"
 * times: the middle of those is taken as the moment of the reading, give
 * or take half the interval (the error).  Connecting and TLS are outside
 * the interval; a busy peer widens it.
 *
 * The limit is pending_ttl / 4.  A peer whose clock differs by more, error
 * included, disagrees with this member; one whose clock differs by less,
 * error included, agrees; one that may be either does not count.  The
 * verdict, after each round:
 *
 *   off        more peers disagree than agree (this member counts as
 *              agreeing with itself): this member's clock is the odd one
 *   ok         this member and the peers that agree are a majority of
 *              the group
 *   unchecked  neither (too few peers measured, at start or cut off)
 *
 * Only an "ok" member expires reservations and prunes by the clock
 * (repl_clock_trusted, main.c): a pause is harmless, a reservation just
 * lives longer.  An "off" member is not to be master: repl_electable sets
 * its priority to 0 and, if it is the master, steps it down.  An
 * "unchecked" member may be elected (the clock must not decide whether a
 * group can start), but does not expire until a majority agrees.  In a
 * group of two, or of three with one member down, two members whose clocks
 * disagree are both "off": neither can tell whose clock is wrong, and the
 * group has no master until the clock is corrected.
 *
 * Samples older than REPL_CLOCK_FRESH_MS do not count.  The thread calls
 * into Berkeley DB only through repl_electable, which does nothing once
 * the environment has failed.
 */
#include "config.h"

#include <sys/types.h>

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <curl/curl.h>

#include "log.h"
#include "phoneclaimd.h"
#include "xmalloc.h"

#define REPL_CLOCK_MS		1000	/* between two rounds */
#define REPL_CLOCK_CONNECT_MS	1000	/* to connect to a peer */
#define REPL_CLOCK_TIMEOUT_MS	2000	/* one probe at most */
#define REPL_CLOCK_FRESH_MS	30000	/* a sample counts this long */
#define REPL_CLOCK_STEP_MS	1000	/* a step of the clock, not a slew */

/* What this member knows of one peer's clock. */
struct repl_clock_peer {
	CURL			*easy;
	const char		*name;		/* its repl address */
	int64_t			 stamp;		/* its clock, ms; -1: none */
	int			 have;		/* a sample: */
	int64_t			 skew;		/* its clock minus ours, ms */
	int64_t			 error;		/* give or take, ms */
	int64_t			 at;		/* monotonic ms of the sample */
	int			 warned;	/* skew above repl_clock_warn */
};

struct repl_clock {
	const struct conf	*conf;
	int64_t			 limit;		/* ms: pending_ttl / 4 */
	pthread_mutex_t		 mu;
	pthread_cond_t		 cond;
	pthread_t		 thread;
	int			 running;
	/* Under mu. */
	int			 stop;
	int			 state;		/* enum repl_clock_state */
	int64_t			 base;		/* ms: clock minus monotonic */
	int			 based;		/* base is known */
	struct repl_clock_peer	 peers[CONF_PEERS_MAX];
	size_t			 npeers;
};

static struct repl_clock	*repl_clock;

static void	*repl_clock_main(void *);
static void	 repl_clock_round(struct repl_clock *);
static void	 repl_clock_rebase(struct repl_clock *);
static int64_t	 repl_clock_base(void);
static int	 repl_clock_probe(struct repl_clock_peer *, int64_t *,
		    int64_t *);
static int	 repl_clock_verdict(struct repl_clock *, int64_t);
static void	 repl_clock_warn(struct repl_clock *, struct repl_clock_peer *);
static void	 repl_clock_log(struct repl_clock *, int, int);
static int64_t	 repl_clock_mono_ms(void);
static size_t	 repl_clock_header_cb(char *, size_t, size_t, void *);
static size_t	 repl_clock_discard_cb(char *, size_t, size_t, void *);
static int	 repl_clock_progress_cb(void *, curl_off_t, curl_off_t,
		    curl_off_t, curl_off_t);

/* This host's wall clock in milliseconds since the epoch. */
int64_t
repl_clock_now_ms(void)
{
	struct timespec	ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return ((int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000);
}

/* The monotonic clock in milliseconds. */
static int64_t
repl_clock_mono_ms(void)
{
	struct timespec	ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ((int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000);
}

/* Prepare a probe of every peer's /healthz (conf has repl_local). */
void
repl_clock_init(const struct conf *conf)
{
	struct repl_clock	*c;
	struct repl_clock_peer	*p;
	pthread_condattr_t	 attr;
	char			*url;
	size_t			 i;

	c = xcalloc(1, sizeof *c);
	c->conf = conf;
	c->limit = conf->pending_ttl * 1000 / 4;
	pthread_mutex_init(&c->mu, NULL);
	pthread_condattr_init(&attr);
	pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
	pthread_cond_init(&c->cond, &attr);
	pthread_condattr_destroy(&attr);
	for (i = 0; i < conf->repl_npeers && i < CONF_PEERS_MAX; i++) {
		p = &c->peers[i];
		p->name = conf->repl_peers[i].repl;
		if ((p->easy = curl_easy_init()) == NULL)
			fatalx("replication: curl_easy_init");
		xasprintf(&url, "%s://%s/healthz", conf->tls_cert_file !=
		    NULL ? "https" : "http", conf->repl_peers[i].api);
		curl_easy_setopt(p->easy, CURLOPT_URL, url);
		free(url);
		curl_easy_setopt(p->easy, CURLOPT_PROTOCOLS_STR, "http,https");
		curl_easy_setopt(p->easy, CURLOPT_NOSIGNAL, 1L);
		curl_easy_setopt(p->easy, CURLOPT_CONNECTTIMEOUT_MS,
		    (long)REPL_CLOCK_CONNECT_MS);
		curl_easy_setopt(p->easy, CURLOPT_TIMEOUT_MS,
		    (long)REPL_CLOCK_TIMEOUT_MS);
		curl_easy_setopt(p->easy, CURLOPT_SSL_VERIFYPEER, 1L);
		curl_easy_setopt(p->easy, CURLOPT_SSL_VERIFYHOST, 2L);
		if (conf->repl_ca_file != NULL)
			curl_easy_setopt(p->easy, CURLOPT_CAINFO,
			    conf->repl_ca_file);
		curl_easy_setopt(p->easy, CURLOPT_HEADERFUNCTION,
		    repl_clock_header_cb);
		curl_easy_setopt(p->easy, CURLOPT_HEADERDATA, p);
		curl_easy_setopt(p->easy, CURLOPT_WRITEFUNCTION,
		    repl_clock_discard_cb);
		curl_easy_setopt(p->easy, CURLOPT_NOPROGRESS, 0L);
		curl_easy_setopt(p->easy, CURLOPT_XFERINFOFUNCTION,
		    repl_clock_progress_cb);
		curl_easy_setopt(p->easy, CURLOPT_XFERINFODATA, c);
	}
	c->npeers = i;
	repl_clock = c;
}

/* Start the clock thread. */
int
repl_clock_start(char **cause)
{
	struct repl_clock	*c = repl_clock;
	int			 ret;

	if (c == NULL || c->running)
		return (0);
	if ((ret = pthread_create(&c->thread, NULL, repl_clock_main, c)) != 0) {
		xasprintf(cause, "replication: pthread_create: %s",
		    strerror(ret));
		return (-1);
	}
	c->running = 1;
	return (0);
}

/* Stop the clock thread (a probe under way is abandoned). */
void
repl_clock_stop(void)
{
	struct repl_clock	*c = repl_clock;

	if (c == NULL || !c->running)
		return;
	pthread_mutex_lock(&c->mu);
	c->stop = 1;
	pthread_cond_signal(&c->cond);
	pthread_mutex_unlock(&c->mu);
	pthread_join(c->thread, NULL);
	c->running = 0;
}

/* Free everything (after repl_clock_stop). */
void
repl_clock_free(void)
{
	struct repl_clock	*c = repl_clock;
	size_t			 i;

	if (c == NULL)
		return;
	repl_clock_stop();
	for (i = 0; i < c->npeers; i++)
		curl_easy_cleanup(c->peers[i].easy);
	pthread_cond_destroy(&c->cond);
	pthread_mutex_destroy(&c->mu);
	free(c);
	repl_clock = NULL;
}

/* The clock thread: a round every REPL_CLOCK_MS until told to stop. */
static void *
repl_clock_main(void *arg)
{
	struct repl_clock	*c = arg;
	struct timespec		 ts;

	pthread_mutex_lock(&c->mu);
	while (!c->stop) {
		pthread_mutex_unlock(&c->mu);
		repl_clock_round(c);
		pthread_mutex_lock(&c->mu);
		if (c->stop)
			break;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		ts.tv_nsec += REPL_CLOCK_MS * 1000000L;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		(void)pthread_cond_timedwait(&c->cond, &c->mu, &ts);
	}
	pthread_mutex_unlock(&c->mu);
	return (NULL);
}

/*
 * Probe every peer, keep the samples, judge, and act: log what changed,
 * and keep this member out of the master role while its clock is off.
 */
static void
repl_clock_round(struct repl_clock *c)
{
	struct repl_clock_peer	*p;
	int64_t			 skew, error;
	size_t			 i;
	int			 was, now;

	repl_clock_rebase(c);
	for (i = 0; i < c->npeers; i++) {
		p = &c->peers[i];
		if (repl_clock_probe(p, &skew, &error) != 0)
			continue;
		pthread_mutex_lock(&c->mu);
		p->have = 1;
		p->skew = skew;
		p->error = error;
		p->at = repl_clock_mono_ms();
		pthread_mutex_unlock(&c->mu);
		repl_clock_warn(c, p);
	}
	pthread_mutex_lock(&c->mu);
	was = c->state;
	now = c->state = repl_clock_verdict(c, repl_clock_mono_ms());
	pthread_mutex_unlock(&c->mu);
	if (now != was)
		repl_clock_log(c, was, now);
	repl_electable(now != REPL_CLOCK_OFF);
}

/* This member's clock minus its monotonic clock, in ms. */
static int64_t
repl_clock_base(void)
{
	return (repl_clock_now_ms() - repl_clock_mono_ms());
}

/*
 * Before a round: if this member's clock stepped since the last one (an
 * operator or NTP set it), the peers' samples measured the old clock:
 * forget them, so that the verdict waits for new ones.  Until then
 * repl_clock_trusted says no (a master an hour ahead would otherwise
 * expire every reservation in the seconds before its next round).
 */
static void
repl_clock_rebase(struct repl_clock *c)
{
	int64_t	base = repl_clock_base(), step;
	size_t	i;

	pthread_mutex_lock(&c->mu);
	step = c->based ? base - c->base : 0;
	if (step > REPL_CLOCK_STEP_MS || step < -REPL_CLOCK_STEP_MS) {
		for (i = 0; i < c->npeers; i++)
			c->peers[i].have = 0;
	}
	c->base = base;
	c->based = 1;
	pthread_mutex_unlock(&c->mu);
	if (step > REPL_CLOCK_STEP_MS || step < -REPL_CLOCK_STEP_MS)
		log_warnx("replication: this member's clock stepped by %"
		    PRId64 " ms: it acts on it again once its peers' clocks "
		    "are read", step);
}

/*
 * Ask peer p for its clock; return 0 with its skew (its clock minus
 * ours) and the error of that, in ms, or -1 without an answer.
 */
static int
repl_clock_probe(struct repl_clock_peer *p, int64_t *skew, int64_t *error)
{
	curl_off_t	pre, first;
	int64_t		start;
	long		code = 0;

	p->stamp = -1;
	start = repl_clock_now_ms();
	if (curl_easy_perform(p->easy) != CURLE_OK || p->stamp < 0 ||
	    curl_easy_getinfo(p->easy, CURLINFO_RESPONSE_CODE, &code) !=
	    CURLE_OK || code == 0 ||
	    curl_easy_getinfo(p->easy, CURLINFO_PRETRANSFER_TIME_T, &pre) !=
	    CURLE_OK ||
	    curl_easy_getinfo(p->easy, CURLINFO_STARTTRANSFER_TIME_T,
	    &first) != CURLE_OK || first < pre)
		return (-1);
	/* Microseconds from the start of the transfer. */
	*skew = p->stamp - (start + (int64_t)(pre + first) / 2000);
	*error = (int64_t)(first - pre) / 2000 + 1;
	return (0);
}

/* The verdict on this member's clock from the fresh samples (mu held). */
static int
repl_clock_verdict(struct repl_clock *c, int64_t now)
{
	struct repl_clock_peer	*p;
	size_t			 i, agree = 0, disagree = 0;

	for (i = 0; i < c->npeers; i++) {
		p = &c->peers[i];
		if (!p->have || now - p->at > REPL_CLOCK_FRESH_MS)
			continue;
		if (llabs(p->skew) - p->error > c->limit)
			disagree++;
		else if (llabs(p->skew) + p->error <= c->limit)
			agree++;
	}
	if (disagree > agree)
		return (REPL_CLOCK_OFF);
	if (2 * (1 + agree) > c->npeers + 1)
		return (REPL_CLOCK_OK);
	return (REPL_CLOCK_UNCHECKED);
}

/*
 * Warn once when a peer's clock is surely past repl_clock_warn, and say
 * when it is back within half of it.
 */
static void
repl_clock_warn(struct repl_clock *c, struct repl_clock_peer *p)
{
	int64_t	warn = c->conf->repl_clock_warn;

	if (!p->warned && llabs(p->skew) - p->error > warn) {
		p->warned = 1;
		log_warnx("replication: the clock of %s is %+.3f s from this "
		    "member's (repl_clock_warn is %.3f s)", p->name,
		    (double)p->skew / 1000, (double)warn / 1000);
	} else if (p->warned && llabs(p->skew) + p->error <= warn / 2) {
		p->warned = 0;
		log_info("replication: the clock of %s is %+.3f s from this "
		    "member's again", p->name, (double)p->skew / 1000);
	}
}

/* Log a change of verdict. */
static void
repl_clock_log(struct repl_clock *c, int was, int now)
{
	switch (now) {
	case REPL_CLOCK_OFF:
		log_warnx("replication: this member's clock is off the "
		    "group's by more than pending_ttl / 4 (%.3f s): it expires "
		    "no reservation and is not master until it is corrected",
		    (double)c->limit / 1000);
		break;
	case REPL_CLOCK_OK:
		if (was == REPL_CLOCK_OFF)
			log_info("replication: this member's clock agrees "
			    "with the group's again: it expires reservations "
			    "and may be master");
		else
			log_info("replication: this member's clock agrees "
			    "with a majority of the group");
		break;
	default:
		if (was == REPL_CLOCK_OFF)
			log_info("replication: this member's clock agrees "
			    "with the group's again, but too few members "
			    "answer to check it: it may be master, and "
			    "expires no reservation until a majority agrees");
		else
			log_info("replication: too few members answer to "
			    "check this member's clock: it expires no "
			    "reservation until a majority agrees");
		break;
	}
}

/*
 * Return 1 if this member may act on its clock (expire reservations,
 * prune by age): no replication, or a clock that a majority of the group
 * agrees with.
 */
int
repl_clock_trusted(void)
{
	struct repl_clock	*c = repl_clock;
	int64_t			 base, step;
	int			 state, based;

	if (c == NULL)
		return (1);
	pthread_mutex_lock(&c->mu);
	state = c->state;
	base = c->base;
	based = c->based;
	pthread_mutex_unlock(&c->mu);
	/* A step since the last round: the verdict is of the old clock. */
	step = based ? repl_clock_base() - base : 0;
	if (step > REPL_CLOCK_STEP_MS || step < -REPL_CLOCK_STEP_MS)
		return (0);
	return (state == REPL_CLOCK_OK);
}

/* Fill the clock members of ri (the peers in configuration order). */
void
repl_clock_info(struct repl_info *ri)
{
	struct repl_clock	*c = repl_clock;
	struct repl_clock_peer	*p;
	int64_t			 now = repl_clock_mono_ms();
	size_t			 i;

	if (c == NULL)
		return;
	pthread_mutex_lock(&c->mu);
	ri->clock = c->state;
	for (i = 0; i < c->npeers; i++) {
		p = &c->peers[i];
		if (!p->have || now - p->at > REPL_CLOCK_FRESH_MS)
			continue;
		ri->peers[i].skew_known = 1;
		ri->peers[i].skew = p->skew;
		if (!ri->skew_known || llabs(p->skew) > llabs(ri->skew)) {
			ri->skew_known = 1;
			ri->skew = p->skew;
		}
	}
	pthread_mutex_unlock(&c->mu);
}

/* The name of a verdict. */
const char *
repl_clock_name(int state)
{
	switch (state) {
	case REPL_CLOCK_OK:
		return ("ok");
	case REPL_CLOCK_OFF:
		return ("off");
	default:
		return ("unchecked");
	}
}

/* Keep the peer's clock from its answer's REPL_CLOCK_HEADER. */
static size_t
repl_clock_header_cb(char *buf, size_t size, size_t n, void *arg)
{
	struct repl_clock_peer	*p = arg;
	size_t			 len = size * n, hlen;
	char			 value[32], *end;
	long long		 v;

	hlen = strlen(REPL_CLOCK_HEADER);
	if (len <= hlen + 1 || strncasecmp(buf, REPL_CLOCK_HEADER, hlen) != 0 ||
	    buf[hlen] != ':' || len - hlen - 1 >= sizeof value)
		return (len);
	memcpy(value, buf + hlen + 1, len - hlen - 1);
	value[len - hlen - 1] = '\0';
	v = strtoll(value, &end, 10);
	while (*end == ' ' || *end == '\r' || *end == '\n')
		end++;
	if (*end == '\0' && v > 0)
		p->stamp = v;
	return (len);
}

/* The answer's body is not needed. */
static size_t
repl_clock_discard_cb(char *buf, size_t size, size_t n, void *arg)
{
	(void)buf;
	(void)arg;
	return (size * n);
}

/* Abandon a probe when the thread is told to stop. */
static int
repl_clock_progress_cb(void *arg, curl_off_t dltotal, curl_off_t dlnow,
    curl_off_t ultotal, curl_off_t ulnow)
{
	struct repl_clock	*c = arg;
	int			 stop;

	(void)dltotal;
	(void)dlnow;
	(void)ultotal;
	(void)ulnow;
	pthread_mutex_lock(&c->mu);
	stop = c->stop;
	pthread_mutex_unlock(&c->mu);
	return (stop);
}
