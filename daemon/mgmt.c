/*
 * The Auth0 Management API client: libcurl's multi interface driven by
 * the event loop (socket and timer callbacks, no blocking call, no
 * thread).  It keeps a client-credentials token and does three jobs, one
 * request at a time, in this order of priority:
 *
 *   the backfill: GET /api/v2/logs from the highest log id applied,
 *   following the Link "next" URL until an empty page, every page going
 *   through the same path as the webhook (logstream_ingest), so overlap is
 *   harmless;
 *
 *   removals (on_conflict = remove): DELETE the phone method of a conflict
 *   record that asks for it, and write the outcome into the record;
 *
 *   verifications: GET /api/v2/users/{id}/authentication-methods for each
 *   user waiting in verify.db, settled by verify.c;
 *
 *   the bootstrap (bootstrap.c), when asked for: the users export job,
 *   its file, and the same GET for each user it lists;
 *
 *   reconciliation, last: the same GET for the user of the next active
 *   claim of the pass (reconcile.c).
 *
 * The bootstrap and reconciliation send only while more than
 * reconcile_share percent of the rate-limit bucket is left, so that they
 * never starve the other jobs or the tenant's other clients.
 *
 * Nothing of a job is kept only in memory: after a failure, a restart or
 * a new token the next step is worked out again from the store.
 */
#include "config.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <curl/curl.h>
#include <event2/event.h>
#include <yajl/yajl_tree.h>

#include "log.h"
#include "phoneclaimd.h"
#include "xmalloc.h"

#define MGMT_REPLICA_WAIT	5	/* s: a replica checks its role again */
#define MGMT_TIMEOUT		30L	/* seconds, whole request */
#define MGMT_CONNECT_TIMEOUT	10L
#define MGMT_BODY_MAX		(16 * 1024 * 1024)
#define MGMT_FILE_MAX		(4LL * 1024 * 1024 * 1024)	/* export */
#define MGMT_SLOW_TIME		60L	/* s below MGMT_SLOW_SPEED: give up */
#define MGMT_SLOW_SPEED		1024L	/* bytes per second */
#define MGMT_TOKEN_MARGIN	60	/* renew this long before expiry */
#define MGMT_BACKOFF_MIN	1
#define MGMT_BACKOFF_MAX	300
#define MGMT_RESET_MAX		120	/* longest rate-limit wait */
#define MGMT_TAKE		100
#define MGMT_EXPIRING_BATCH	1000	/* reservations looked at per tick */
#define MGMT_VERIFY_LEAD	120	/* verify this long before expiry */
#define MGMT_VERIFY_LEAD_MIN	10	/* two ticks of main's expiry timer */

enum mgmt_kind {
	MGMT_TOKEN = 1,
	MGMT_LOGS,
	MGMT_DELETE,
	MGMT_METHODS,
	MGMT_BOOT		/* what bootstrap.c asks for */
};

/* What the request in flight (or the step that failed) is for. */
enum mgmt_job {
	MGMT_JOB_BACKFILL = 0,
	MGMT_JOB_REMOVE,
	MGMT_JOB_VERIFY,
	MGMT_JOB_BOOTSTRAP,
	MGMT_JOB_RECONCILE
};

struct mgmt_xfer {
	CURL			*easy;
	enum mgmt_kind		 kind;
	struct curl_slist	*headers;
	char			*post;
	char			*body;
	size_t			 len;
	FILE			*out;		/* the body goes there */
	long long		 written;
	char			*next;		/* Link rel="next" */
	long long		 rl_limit;	/* -1: not sent */
	long long		 rl_remaining;	/* -1: not sent */
	long long		 rl_reset;
	char			 error[CURL_ERROR_SIZE];
};

struct mgmt {
	struct event_base	*base;
	const struct conf	*conf;
	CURLM			*multi;
	struct event		*curl_ev;	/* libcurl's timer */
	struct event		*run_ev;	/* next step, retry or idle */
	char			*base_url;
	char			*audience;
	char			*secret;
	size_t			 secretlen;
	char			*token;
	time_t			 token_expires;
	int			 token_retried;
	struct mgmt_xfer	*xfer;		/* at most one in flight */
	char			*url;		/* the page to fetch next */
	int			 search;	/* url is a date search */
	int			 backoff;
	time_t			 not_before;	/* rate limit */
	int			 again;		/* run asked while running */
	int			 logged;	/* this failure streak logged */
	int			 told;		/* "nothing to do" logged */
	int			 backing_off;	/* a retry is scheduled */
	enum mgmt_job		 job;
	struct conflict		 rm;		/* the removal being made */
	char			 vuser[USER_ID_MAX + 1];	/* verifying */
	int64_t			 vasked_ms;	/* when its GET was sent */
	int			 vreasons;
	int			 vtries;	/* its failed lookups so far */
	time_t			 vwake;		/* a retry is due then */
	int64_t			 verify_after;	/* expiries asked up to */
	char			 ruser[USER_ID_MAX + 1];	/* reconciling */
	long long		 rl_limit;	/* the last answer's, or -1 */
	long long		 rl_left;
	time_t			 rl_reset;
	struct mgmt_status	 st;
};

static struct mgmt	*mgmt;

static int	mgmt_socket_cb(CURL *, curl_socket_t, int, void *, void *);
static int	mgmt_timer_cb(CURLM *, long, void *);
static void	mgmt_event_cb(evutil_socket_t, short, void *);
static void	mgmt_curl_timeout_cb(evutil_socket_t, short, void *);
static void	mgmt_run_cb(evutil_socket_t, short, void *);
static void	mgmt_check(void);
static void	mgmt_succeeded(void);
static size_t	mgmt_write_cb(char *, size_t, size_t, void *);
static size_t	mgmt_header_cb(char *, size_t, size_t, void *);
static void	mgmt_link(struct mgmt_xfer *, const char *, size_t);
static int	mgmt_send(enum mgmt_kind, const char *, const char *);
static int	mgmt_send_req(enum mgmt_kind, const char *, const char *, int,
		    FILE *);
static void	mgmt_xfer_free(struct mgmt_xfer *);
static void	mgmt_done(struct mgmt_xfer *, CURLcode);
static void	mgmt_token_done(struct mgmt_xfer *, long);
static void	mgmt_logs_done(struct mgmt_xfer *, long);
static void	mgmt_page(struct mgmt_xfer *);
static void	mgmt_step(void);
static int	mgmt_begin(void);
static void	mgmt_fail(const char *, int);
static void	mgmt_finish(void);
static void	mgmt_schedule(int);
static void	mgmt_set_url(char *, int);
static char	*mgmt_logs_url(const char *);
static int	mgmt_token_ok(void);
static int	mgmt_remove_next(void);
static void	mgmt_remove_done(struct mgmt_xfer *, long);
static int	mgmt_verify_next(void);
static void	mgmt_verify_done(struct mgmt_xfer *, long);
static void	mgmt_verify_failed(const char *, long);
static int	mgmt_bootstrap_next(int64_t *);
static void	mgmt_bootstrap_done(struct mgmt_xfer *, long);
static int	mgmt_share_left(int64_t *);
static int	mgmt_reconcile_next(int64_t *);
static void	mgmt_reconcile_done(struct mgmt_xfer *, long);
static int	mgmt_renew_on_401(long);
static char	*mgmt_user_url(const char *, const char *);
static const char *mgmt_kind_name(enum mgmt_kind);

/* Start the client if the configuration names a tenant. */
int
mgmt_init(struct event_base *base, const struct conf *conf, char **cause)
{
	struct mgmt	*m;

	if (conf->auth0_domain == NULL)
		return (0);
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != 0) {
		xasprintf(cause, "curl_global_init failed");
		return (-1);
	}
	m = xcalloc(1, sizeof *m);
	m->base = base;
	m->conf = conf;
	if (conf_read_secret(conf->auth0_client_secret_file, &m->secret,
	    &m->secretlen, cause) != 0) {
		free(m);
		curl_global_cleanup();
		return (-1);
	}
	if (conf->auth0_base_url != NULL)
		m->base_url = xstrdup(conf->auth0_base_url);
	else
		xasprintf(&m->base_url, "https://%s", conf->auth0_domain);
	while (strlen(m->base_url) > 8 &&
	    m->base_url[strlen(m->base_url) - 1] == '/')
		m->base_url[strlen(m->base_url) - 1] = '\0';
	xasprintf(&m->audience, "https://%s/api/v2/", conf->auth0_domain);
	if ((m->multi = curl_multi_init()) == NULL)
		fatalx("curl_multi_init");
	curl_multi_setopt(m->multi, CURLMOPT_SOCKETFUNCTION, mgmt_socket_cb);
	curl_multi_setopt(m->multi, CURLMOPT_TIMERFUNCTION, mgmt_timer_cb);
	m->curl_ev = evtimer_new(base, mgmt_curl_timeout_cb, NULL);
	m->run_ev = evtimer_new(base, mgmt_run_cb, NULL);
	if (m->curl_ev == NULL || m->run_ev == NULL)
		fatalx("evtimer_new");
	m->st.state = MGMT_IDLE;
	m->again = 1;		/* a run at start */
	m->verify_after = (int64_t)time(NULL);
	m->rl_limit = m->rl_left = -1;
	mgmt = m;
	verify_init(1);
	mgmt_schedule(0);
	log_info("Management API: %s, backfill after %llds without events",
	    m->base_url, conf->backfill_idle);
	return (0);
}

/* Stop any transfer and free the client. */
void
mgmt_free(void)
{
	struct mgmt	*m = mgmt;

	if (m == NULL)
		return;
	if (m->xfer != NULL)
		mgmt_xfer_free(m->xfer);
	verify_init(0);
	curl_multi_cleanup(m->multi);
	event_free(m->curl_ev);
	event_free(m->run_ev);
	if (m->token != NULL)
		explicit_bzero(m->token, strlen(m->token));
	explicit_bzero(m->secret, m->secretlen);
	free(m->token);
	free(m->secret);
	free(m->base_url);
	free(m->audience);
	free(m->url);
	free(m);
	mgmt = NULL;
	curl_global_cleanup();
}

/* The backfill's state for status and metrics (disabled if unset). */
const struct mgmt_status *
mgmt_status(void)
{
	static const struct mgmt_status	disabled = { .state = MGMT_DISABLED };

	return (mgmt != NULL ? &mgmt->st : &disabled);
}

/* Name of a backfill state. */
const char *
mgmt_state_name(int state)
{
	switch (state) {
	case MGMT_IDLE:
		return ("idle");
	case MGMT_RUNNING:
		return ("running");
	case MGMT_FAILING:
		return ("failed");
	default:
		return ("disabled");
	}
}

/* Ask for a backfill run now (the status socket); -1 if not configured. */
int
mgmt_backfill(void)
{
	if (mgmt == NULL)
		return (-1);
	if (mgmt->st.state == MGMT_RUNNING || mgmt->st.state == MGMT_FAILING) {
		mgmt->again = 1;
		if (mgmt->st.state == MGMT_FAILING && mgmt->xfer == NULL)
			mgmt_schedule(0);
		return (0);
	}
	mgmt->again = 1;
	mgmt_schedule(0);
	return (0);
}

/* libcurl wants a socket watched (or no longer). */
static int
mgmt_socket_cb(CURL *easy, curl_socket_t s, int what, void *userp,
    void *socketp)
{
	struct event	*ev = socketp;
	short		 flags = EV_PERSIST;

	(void)easy;
	(void)userp;
	if (ev != NULL) {
		event_free(ev);
		ev = NULL;
	}
	if (what == CURL_POLL_REMOVE) {
		curl_multi_assign(mgmt->multi, s, NULL);
		return (0);
	}
	if (what & CURL_POLL_IN)
		flags |= EV_READ;
	if (what & CURL_POLL_OUT)
		flags |= EV_WRITE;
	if ((ev = event_new(mgmt->base, s, flags, mgmt_event_cb, NULL)) ==
	    NULL)
		fatalx("event_new");
	event_add(ev, NULL);
	curl_multi_assign(mgmt->multi, s, ev);
	return (0);
}

/* libcurl wants to be called after timeout_ms (-1: never). */
static int
mgmt_timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
	struct timeval	tv;

	(void)multi;
	(void)userp;
	if (timeout_ms < 0) {
		evtimer_del(mgmt->curl_ev);
		return (0);
	}
	tv.tv_sec = timeout_ms / 1000;
	tv.tv_usec = (timeout_ms % 1000) * 1000;
	evtimer_add(mgmt->curl_ev, &tv);
	return (0);
}

/* A watched socket is ready. */
static void
mgmt_event_cb(evutil_socket_t fd, short events, void *arg)
{
	int	flags = 0, running;

	(void)arg;
	if (events & EV_READ)
		flags |= CURL_CSELECT_IN;
	if (events & EV_WRITE)
		flags |= CURL_CSELECT_OUT;
	curl_multi_socket_action(mgmt->multi, fd, flags, &running);
	mgmt_check();
}

/* libcurl's timer fired. */
static void
mgmt_curl_timeout_cb(evutil_socket_t fd, short events, void *arg)
{
	int	running;

	(void)fd;
	(void)events;
	(void)arg;
	curl_multi_socket_action(mgmt->multi, CURL_SOCKET_TIMEOUT, 0,
	    &running);
	mgmt_check();
}

/* Handle finished transfers. */
static void
mgmt_check(void)
{
	CURLMsg			*msg;
	struct mgmt_xfer	*x;
	int			 left;

	while (mgmt != NULL &&
	    (msg = curl_multi_info_read(mgmt->multi, &left)) != NULL) {
		if (msg->msg != CURLMSG_DONE)
			continue;
		curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE,
		    (char **)&x);
		mgmt_done(x, msg->data.result);
	}
}

/* Keep a body, up to MGMT_BODY_MAX. */
static size_t
mgmt_write_cb(char *p, size_t size, size_t n, void *arg)
{
	struct mgmt_xfer	*x = arg;

	n *= size;
	if (x->out != NULL) {
		if (x->written + (long long)n > MGMT_FILE_MAX ||
		    fwrite(p, 1, n, x->out) != n)
			return (0);
		x->written += (long long)n;
		return (n);
	}
	if (x->len + n > MGMT_BODY_MAX)
		return (0);
	x->body = xreallocarray(x->body, x->len + n + 1, 1);
	memcpy(x->body + x->len, p, n);
	x->len += n;
	x->body[x->len] = '\0';
	return (n);
}

/* Note the rate-limit and Link headers. */
static size_t
mgmt_header_cb(char *p, size_t size, size_t n, void *arg)
{
	struct mgmt_xfer	*x = arg;
	size_t			 len = size * n;
	char			 v[32];

	if (len > 18 && strncasecmp(p, "x-ratelimit-limit:", 18) == 0) {
		snprintf(v, sizeof v, "%.*s", (int)(len - 18), p + 18);
		x->rl_limit = strtoll(v, NULL, 10);
	} else if (len > 22 &&
	    strncasecmp(p, "x-ratelimit-remaining:", 22) == 0) {
		snprintf(v, sizeof v, "%.*s", (int)(len - 22), p + 22);
		x->rl_remaining = strtoll(v, NULL, 10);
	} else if (len > 18 && strncasecmp(p, "x-ratelimit-reset:", 18) == 0) {
		snprintf(v, sizeof v, "%.*s", (int)(len - 18), p + 18);
		x->rl_reset = strtoll(v, NULL, 10);
	} else if (len > 5 && strncasecmp(p, "link:", 5) == 0)
		mgmt_link(x, p + 5, len - 5);
	return (len);
}

/* Find the rel="next" URL in a Link header value. */
static void
mgmt_link(struct mgmt_xfer *x, const char *p, size_t len)
{
	const char	*end = p + len, *lt, *gt;

	while ((lt = memchr(p, '<', end - p)) != NULL &&
	    (gt = memchr(lt, '>', end - lt)) != NULL) {
		p = gt + 1;
		while (p < end && (*p == ';' || *p == ' '))
			p++;
		if (end - p >= 10 && strncmp(p, "rel=\"next\"", 10) == 0) {
			free(x->next);
			x->next = xmalloc(gt - lt);
			memcpy(x->next, lt + 1, gt - lt - 1);
			x->next[gt - lt - 1] = '\0';
			return;
		}
	}
}

/* Start one request: the token (post set) or a page of logs. */
static int
mgmt_send(enum mgmt_kind kind, const char *url, const char *post)
{
	return (mgmt_send_req(kind, url, post, post == NULL, NULL));
}

/*
 * Start one request: a POST of post (a form without auth, JSON with it)
 * or a GET, with the token if auth, its body into out if not NULL.
 */
static int
mgmt_send_req(enum mgmt_kind kind, const char *url, const char *post,
    int auth, FILE *out)
{
	struct mgmt_xfer	*x;
	char			*bearer;

	x = xcalloc(1, sizeof *x);
	x->kind = kind;
	x->rl_limit = x->rl_remaining = x->rl_reset = -1;
	if ((x->easy = curl_easy_init()) == NULL)
		fatalx("curl_easy_init");
	curl_easy_setopt(x->easy, CURLOPT_URL, url);
	curl_easy_setopt(x->easy, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(x->easy, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(x->easy, CURLOPT_TIMEOUT, MGMT_TIMEOUT);
	curl_easy_setopt(x->easy, CURLOPT_CONNECTTIMEOUT,
	    MGMT_CONNECT_TIMEOUT);
	curl_easy_setopt(x->easy, CURLOPT_SSL_VERIFYPEER, 1L);
	curl_easy_setopt(x->easy, CURLOPT_SSL_VERIFYHOST, 2L);
	curl_easy_setopt(x->easy, CURLOPT_ERRORBUFFER, x->error);
	curl_easy_setopt(x->easy, CURLOPT_WRITEFUNCTION, mgmt_write_cb);
	curl_easy_setopt(x->easy, CURLOPT_WRITEDATA, x);
	curl_easy_setopt(x->easy, CURLOPT_HEADERFUNCTION, mgmt_header_cb);
	curl_easy_setopt(x->easy, CURLOPT_HEADERDATA, x);
	curl_easy_setopt(x->easy, CURLOPT_PRIVATE, x);
	curl_easy_setopt(x->easy, CURLOPT_USERAGENT, "phoneclaimd/"
	    PACKAGE_VERSION);
	x->headers = curl_slist_append(NULL, "Accept: application/json");
	if (kind == MGMT_DELETE)
		curl_easy_setopt(x->easy, CURLOPT_CUSTOMREQUEST, "DELETE");
	if (out != NULL) {
		/* A file of any size: no deadline, but no stall either. */
		x->out = out;
		curl_easy_setopt(x->easy, CURLOPT_TIMEOUT, 0L);
		curl_easy_setopt(x->easy, CURLOPT_LOW_SPEED_LIMIT,
		    MGMT_SLOW_SPEED);
		curl_easy_setopt(x->easy, CURLOPT_LOW_SPEED_TIME,
		    MGMT_SLOW_TIME);
	}
	if (post != NULL) {
		x->post = xstrdup(post);
		curl_easy_setopt(x->easy, CURLOPT_POSTFIELDS, x->post);
		if (auth)
			x->headers = curl_slist_append(x->headers,
			    "Content-Type: application/json");
	}
	if (auth) {
		xasprintf(&bearer, "Authorization: Bearer %s", mgmt->token);
		x->headers = curl_slist_append(x->headers, bearer);
		explicit_bzero(bearer, strlen(bearer));
		free(bearer);
	}
	curl_easy_setopt(x->easy, CURLOPT_HTTPHEADER, x->headers);
	mgmt->xfer = x;
	if (curl_multi_add_handle(mgmt->multi, x->easy) != CURLM_OK)
		fatalx("curl_multi_add_handle");
	return (0);
}

/* Free a transfer. */
static void
mgmt_xfer_free(struct mgmt_xfer *x)
{
	curl_multi_remove_handle(mgmt->multi, x->easy);
	curl_easy_cleanup(x->easy);
	curl_slist_free_all(x->headers);
	if (x->post != NULL)
		explicit_bzero(x->post, strlen(x->post));
	free(x->post);
	free(x->body);
	free(x->next);
	free(x);
	if (mgmt->xfer == x)
		mgmt->xfer = NULL;
}

/* A transfer ended: transport errors here, answers by kind. */
static void
mgmt_done(struct mgmt_xfer *x, CURLcode rc)
{
	char	why[CURL_ERROR_SIZE + 64];
	long	code = 0;

	curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &code);
	if (x->rl_remaining == 0 && x->rl_reset > 0)
		mgmt->not_before = (time_t)x->rl_reset;
	if (x->rl_remaining >= 0) {
		mgmt->rl_limit = x->rl_limit;
		mgmt->rl_left = x->rl_remaining;
		mgmt->rl_reset = (time_t)x->rl_reset;
	}
	if (rc != CURLE_OK) {
		snprintf(why, sizeof why, "%s: %s", mgmt_kind_name(x->kind),
		    x->error[0] != '\0' ? x->error : curl_easy_strerror(rc));
		mgmt_xfer_free(x);
		mgmt_fail(why, 0);
		return;
	}
	if (x->kind == MGMT_TOKEN)
		mgmt_token_done(x, code);
	else if (x->kind == MGMT_DELETE)
		mgmt_remove_done(x, code);
	else if (x->kind == MGMT_BOOT)
		mgmt_bootstrap_done(x, code);
	else if (x->kind == MGMT_METHODS && mgmt->job == MGMT_JOB_RECONCILE)
		mgmt_reconcile_done(x, code);
	else if (x->kind == MGMT_METHODS)
		mgmt_verify_done(x, code);
	else
		mgmt_logs_done(x, code);
	mgmt_xfer_free(x);
}

/* What a kind of request is, for the log. */
static const char *
mgmt_kind_name(enum mgmt_kind kind)
{
	switch (kind) {
	case MGMT_TOKEN:
		return ("token request");
	case MGMT_DELETE:
		return ("DELETE authentication method");
	case MGMT_METHODS:
		return ("GET authentication methods");
	case MGMT_BOOT:
		return ("bootstrap request");
	default:
		return ("GET /api/v2/logs");
	}
}

/*
 * A 401 with a token that should be good: it was revoked or expired early.
 * Drop it and go again once (return 1); a second 401 in a row is a failure.
 */
static int
mgmt_renew_on_401(long code)
{
	if (code != 401 || mgmt->token_retried)
		return (0);
	mgmt->token_retried = 1;
	free(mgmt->token);
	mgmt->token = NULL;
	mgmt_schedule(0);
	return (1);
}

/* The token answer: keep the token until shortly before it expires. */
static void
mgmt_token_done(struct mgmt_xfer *x, long code)
{
	const char	*tp[] = { "access_token", NULL };
	const char	*ep[] = { "expires_in", NULL };
	yajl_val	 root = NULL, t, e;
	char		*cause = NULL, why[128];

	if (code != 200 || x->body == NULL ||
	    (root = json_parse(x->body, x->len, &cause)) == NULL ||
	    (t = yajl_tree_get(root, tp, yajl_t_string)) == NULL ||
	    (e = yajl_tree_get(root, ep, yajl_t_number)) == NULL ||
	    !YAJL_IS_INTEGER(e) || YAJL_GET_INTEGER(e) <= 0) {
		free(cause);
		json_free(root);
		snprintf(why, sizeof why, "token request: HTTP %ld%s", code,
		    code == 200 ? ", not a token" : "");
		mgmt_fail(why, code == 429 ? 1 : 0);
		return;
	}
	free(mgmt->token);
	mgmt->token = xstrdup(YAJL_GET_STRING(t));
	log_debug("Management API: new token for %llds",
	    (long long)YAJL_GET_INTEGER(e));
	mgmt->token_expires = time(NULL) + (time_t)YAJL_GET_INTEGER(e);
	json_free(root);
	mgmt_schedule(0);
}

/* A page of logs, or an error answer. */
static void
mgmt_logs_done(struct mgmt_xfer *x, long code)
{
	char	why[128];

	if (mgmt_renew_on_401(code))
		return;
	if (code != 200) {
		snprintf(why, sizeof why, "GET /api/v2/logs: HTTP %ld", code);
		mgmt_fail(why, code == 429);
		return;
	}
	mgmt->token_retried = 0;
	mgmt_page(x);
}

/* Apply a page through the webhook's path and choose the next URL. */
static void
mgmt_page(struct mgmt_xfer *x)
{
	struct logstream_result	 r;
	char			*last = NULL;
	size_t			 i = 0;
	int			 rv;

	/* Only an array is a page: anything else is retried, not kept. */
	while (i < x->len && isspace((unsigned char)x->body[i]))
		i++;
	if (i == x->len || x->body[i] != '[') {
		mgmt_fail("GET /api/v2/logs: not a JSON array", 0);
		return;
	}
	rv = logstream_ingest("backfill", x->body, x->len, 1, &r);
	if (rv != LOGSTREAM_OK) {
		mgmt_fail(rv == LOGSTREAM_UNAVAILABLE ? "backfill: the store "
		    "is unavailable" : "GET /api/v2/logs: not a JSON page", 0);
		return;
	}
	mgmt->st.pages++;
	mgmt->st.total_pages++;
	mgmt->st.events += r.received;
	mgmt->st.total_events += r.received;
	mgmt->st.applied += r.applied;
	mgmt_succeeded();
	if (mgmt->st.state == MGMT_FAILING) {
		log_info("backfill: recovered");
		mgmt->st.state = MGMT_RUNNING;
	}
	if (r.received == 0) {
		mgmt_finish();
		return;
	}
	if (x->next != NULL && !mgmt->search &&
	    strncmp(x->next, mgmt->base_url, strlen(mgmt->base_url)) == 0) {
		mgmt_set_url(xstrdup(x->next), 0);
	} else {
		if (logstream_last_id(&last) != STORE_OK || last == NULL) {
			free(last);
			mgmt_fail("backfill: no log id after a page", 0);
			return;
		}
		mgmt_set_url(mgmt_logs_url(last), 0);
		free(last);
	}
	mgmt_schedule(0);
}

/* Replace the page to fetch next. */
static void
mgmt_set_url(char *url, int search)
{
	free(mgmt->url);
	mgmt->url = url;
	mgmt->search = search;
}

/* The checkpoint URL of the logs after log id last. */
static char *
mgmt_logs_url(const char *last)
{
	char	*id, *url;

	if ((id = curl_easy_escape(NULL, last, 0)) == NULL)
		fatalx("curl_easy_escape");
	xasprintf(&url, "%s/api/v2/logs?from=%s&take=%d", mgmt->base_url, id,
	    MGMT_TAKE);
	curl_free(id);
	return (url);
}

/* The run timer: start a run, or take the next step of one. */
static void
mgmt_run_cb(evutil_socket_t fd, short events, void *arg)
{
	const struct metrics_events	*e = metrics_events_totals();
	time_t				 now = time(NULL), quiet;
	int64_t				 wait, rwait, bwait = -1;

	(void)fd;
	(void)events;
	(void)arg;
	mgmt->backing_off = 0;
	if (mgmt->xfer != NULL)
		return;
	/* What the Management API says is written: the master's job. */
	if (!repl_writable()) {
		mgmt->again = 1;
		mgmt_schedule(MGMT_REPLICA_WAIT);
		return;
	}
	if (mgmt->st.state != MGMT_IDLE) {
		mgmt->job = MGMT_JOB_BACKFILL;
		mgmt_step();
		return;
	}
	quiet = now - (e->last_received > mgmt->st.last_run ?
	    (time_t)e->last_received : (time_t)mgmt->st.last_run);
	if (mgmt->again || quiet >= mgmt->conf->backfill_idle) {
		mgmt->again = 0;
		if (mgmt_begin())
			return;
		quiet = 0;
	}
	rwait = -1;
	if (mgmt_remove_next() || mgmt_verify_next() ||
	    mgmt_bootstrap_next(&bwait) || mgmt_reconcile_next(&rwait))
		return;
	wait = mgmt->conf->backfill_idle - quiet;
	if (mgmt->vwake > now && mgmt->vwake - now < wait)
		wait = mgmt->vwake - now;	/* a verification retry */
	if (rwait >= 0 && rwait < wait)
		wait = rwait;
	if (bwait >= 0 && bwait < wait)
		wait = bwait;
	mgmt_schedule((int)wait);
}

/*
 * The periodic tick (every few seconds, from main): ask for verifications
 * of reservations that lapse soon, and wake the client if it sleeps.
 */
void
mgmt_tick(int64_t now)
{
	int64_t	lead;
	size_t	asked;

	if (mgmt == NULL)
		return;
	/* Half the TTL, but at least two ticks and at most two minutes. */
	lead = mgmt->conf->pending_ttl / 2;
	if (lead < MGMT_VERIFY_LEAD_MIN)
		lead = MGMT_VERIFY_LEAD_MIN;
	if (lead > MGMT_VERIFY_LEAD)
		lead = MGMT_VERIFY_LEAD;
	if (verify_expiring(&mgmt->verify_after, now + lead,
	    MGMT_EXPIRING_BATCH, now, &asked) == STORE_OK && asked > 0)
		log_debug("verify: %zu reservation(s) lapse within %llds",
		    asked, (long long)lead);
	mgmt_wake();
}

/* Work may be waiting (verifications were asked): run now if asleep. */
void
mgmt_wake(void)
{
	if (mgmt != NULL && mgmt->xfer == NULL && !mgmt->backing_off &&
	    mgmt->st.state == MGMT_IDLE)
		mgmt_schedule(0);
}

/* A request succeeded: the failure streak is over. */
static void
mgmt_succeeded(void)
{
	mgmt->token_retried = 0;
	mgmt->backoff = 0;
	mgmt->logged = 0;
}

/*
 * Start a run from the stored log id, or from backfill_since; 0 if there
 * is nothing to start from.
 */
static int
mgmt_begin(void)
{
	char		*last = NULL, *url, date[32], id[DEADLETTER_LOG_SIZE];
	struct tm	 tm;
	time_t		 t;

	mgmt->job = MGMT_JOB_BACKFILL;
	if (logstream_last_id(&last) != STORE_OK) {
		mgmt->st.state = MGMT_RUNNING;
		mgmt_fail("backfill: the store is unavailable", 0);
		return (1);
	}
	if (last != NULL)
		mgmt_set_url(mgmt_logs_url(last), 0);
	else if (mgmt->conf->backfill_since != NULL) {
		t = (time_t)mgmt->conf->backfill_since_t;
		gmtime_r(&t, &tm);
		strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%S.000Z", &tm);
		xasprintf(&url, "%s/api/v2/logs?q=date%%3A%%5B%s%%20TO%%20*%%5D"
		    "&sort=date%%3A1&per_page=%d", mgmt->base_url, date,
		    MGMT_TAKE);
		mgmt_set_url(url, 1);
	} else {
		if (!mgmt->told)
			log_info("backfill: no log id stored yet and no "
			    "backfill_since: nothing to do");
		mgmt->told = 1;
		mgmt->st.last_run = time(NULL);
		return (0);
	}
	log_info("backfill: starting from %s", last != NULL ?
	    deadletter_log_value(last, id) : mgmt->conf->backfill_since);
	free(last);
	mgmt->st.state = MGMT_RUNNING;
	mgmt->st.pages = mgmt->st.events = 0;
	mgmt->st.runs++;
	mgmt_step();
	return (1);
}

/* Send the next page request, after a token if needed. */
static void
mgmt_step(void)
{
	if (mgmt->url == NULL) {
		mgmt->st.state = MGMT_IDLE;
		mgmt_schedule(0);
		return;
	}
	if (mgmt_token_ok())
		mgmt_send(MGMT_LOGS, mgmt->url, NULL);
}

/*
 * Return 1 if a request may go now with the cached token; else wait for
 * the rate limit, or ask for a token, and return 0.
 */
static int
mgmt_token_ok(void)
{
	char	*post, *id, *secret, *aud;
	time_t	 now = time(NULL);

	if (now < mgmt->not_before) {
		mgmt_schedule((int)(mgmt->not_before - now));
		return (0);
	}
	if (mgmt->token != NULL &&
	    now + MGMT_TOKEN_MARGIN < mgmt->token_expires)
		return (1);
	id = curl_easy_escape(NULL, mgmt->conf->auth0_client_id, 0);
	secret = curl_easy_escape(NULL, mgmt->secret, (int)mgmt->secretlen);
	aud = curl_easy_escape(NULL, mgmt->audience, 0);
	if (id == NULL || secret == NULL || aud == NULL)
		fatalx("curl_easy_escape");
	xasprintf(&post, "grant_type=client_credentials&client_id=%s&"
	    "client_secret=%s&audience=%s", id, secret, aud);
	explicit_bzero(secret, strlen(secret));
	curl_free(id);
	curl_free(secret);
	curl_free(aud);
	free(mgmt->token);
	mgmt->token = NULL;
	xasprintf(&id, "%s/oauth/token", mgmt->base_url);
	mgmt_send(MGMT_TOKEN, id, post);
	free(id);
	explicit_bzero(post, strlen(post));
	free(post);
	return (0);
}

/*
 * A request failed: log it once per streak, show it in status and retry
 * the same step with exponential back-off (or at the rate-limit reset).
 */
static void
mgmt_fail(const char *why, int limited)
{
	time_t	now = time(NULL);
	int	wait;

	switch (mgmt->job) {
	case MGMT_JOB_BACKFILL:
		snprintf(mgmt->st.last_error, sizeof mgmt->st.last_error, "%s",
		    why);
		mgmt->st.failures++;
		mgmt->st.state = MGMT_FAILING;
		break;
	case MGMT_JOB_REMOVE:
		snprintf(mgmt->st.rm_last_error, sizeof mgmt->st.rm_last_error,
		    "%s", why);
		mgmt->st.rm_failures++;
		break;
	case MGMT_JOB_VERIFY:
		snprintf(mgmt->st.v_last_error, sizeof mgmt->st.v_last_error,
		    "%s", why);
		mgmt->st.v_failures++;
		break;
	case MGMT_JOB_BOOTSTRAP:
		bootstrap_failed(why);
		break;
	case MGMT_JOB_RECONCILE:
		reconcile_failed(why);
		break;
	}
	mgmt->backoff = mgmt->backoff == 0 ? MGMT_BACKOFF_MIN :
	    mgmt->backoff * 2;
	if (mgmt->backoff > MGMT_BACKOFF_MAX)
		mgmt->backoff = MGMT_BACKOFF_MAX;
	wait = mgmt->backoff;
	if (limited && mgmt->not_before > now)
		wait = (int)(mgmt->not_before - now);
	if (wait > MGMT_RESET_MAX && limited)
		wait = MGMT_RESET_MAX;
	if (!mgmt->logged)
		log_warnx("%s: %s; retrying with back-off",
		    mgmt->job == MGMT_JOB_BACKFILL ? "backfill" :
		    mgmt->job == MGMT_JOB_REMOVE ? "conflict removal" :
		    mgmt->job == MGMT_JOB_VERIFY ? "verify" :
		    mgmt->job == MGMT_JOB_BOOTSTRAP ? "bootstrap" : "reconcile",
		    why);
	mgmt->logged = 1;
	mgmt->backing_off = 1;
	mgmt_schedule(wait);
}

/* An empty page: the run is complete. */
static void
mgmt_finish(void)
{
	mgmt->st.state = MGMT_IDLE;
	mgmt->st.last_run = time(NULL);
	log_info("backfill: done, %llu page(s), %llu event(s)",
	    (unsigned long long)mgmt->st.pages,
	    (unsigned long long)mgmt->st.events);
	mgmt_schedule(0);	/* removals and verifications next */
}

/* Run the run timer after secs seconds. */
static void
mgmt_schedule(int secs)
{
	struct timeval	tv = { secs, 0 };

	evtimer_add(mgmt->run_ev, &tv);
}

/* The URL of a user's authentication methods, or of one of them. */
static char *
mgmt_user_url(const char *user_id, const char *method)
{
	char	*user, *id = NULL, *url;

	if ((user = curl_easy_escape(NULL, user_id, 0)) == NULL ||
	    (method != NULL && (id = curl_easy_escape(NULL, method, 0)) ==
	    NULL))
		fatalx("curl_easy_escape");
	xasprintf(&url, "%s/api/v2/users/%s/authentication-methods%s%s",
	    mgmt->base_url, user, id != NULL ? "/" : "", id != NULL ? id : "");
	curl_free(user);
	curl_free(id);
	return (url);
}

/*
 * Start deleting the phone method of a conflict that asks for it
 * (on_conflict = remove); 0 if none does.
 */
static int
mgmt_remove_next(void)
{
	char	*method, *url;

	if (claims_removal_next(&mgmt->rm) != STORE_OK)
		return (0);
	mgmt->job = MGMT_JOB_REMOVE;
	if (!mgmt_token_ok())
		return (1);
	xasprintf(&method, "phone|%s", mgmt->rm.method);
	url = mgmt_user_url(mgmt->rm.user_id, method);
	mgmt_send(MGMT_DELETE, url, NULL);
	free(method);
	free(url);
	return (1);
}

/*
 * The DELETE answer: write it into the conflict record and the log, or
 * retry with back-off.  404 means the method is gone already; any other
 * refusal (403: the client lacks delete:authentication_methods) is final.
 */
static void
mgmt_remove_done(struct mgmt_xfer *x, long code)
{
	struct conflict	*cf = &mgmt->rm;
	char		 why[128], method[DEADLETTER_LOG_SIZE];
	char		 user[DEADLETTER_LOG_SIZE], id[DEADLETTER_LOG_SIZE];
	int		 removal;

	(void)x;
	if (mgmt_renew_on_401(code))
		return;
	if (code == 429 || code >= 500 || code < 200 ||
	    (code >= 300 && code < 400)) {
		snprintf(why, sizeof why, "DELETE authentication method: HTTP "
		    "%ld", code);
		mgmt_fail(why, code == 429);
		return;
	}
	mgmt_succeeded();
	if (code == 404)
		removal = CONFLICT_RM_ABSENT;
	else if (code >= 200 && code < 300)
		removal = CONFLICT_RM_DONE;
	else
		removal = CONFLICT_RM_FAILED;
	if (claims_removal_done(cf, removal, (int)code,
	    (int64_t)time(NULL)) != STORE_OK ||
	    claims_flush() != STORE_OK) {
		mgmt_fail("conflict removal: the store is unavailable", 0);
		return;
	}
	if (removal == CONFLICT_RM_DONE)
		mgmt->st.rm_done++;
	else if (removal == CONFLICT_RM_ABSENT)
		mgmt->st.rm_absent++;
	else
		mgmt->st.rm_refused++;
	log_warnx("conflict: on_conflict remove: %s phone method phone|%s of "
	    "user %s on the number ending %s (HTTP %ld%s%s)",
	    removal == CONFLICT_RM_DONE ? "deleted" :
	    removal == CONFLICT_RM_ABSENT ? "already no" : "could not delete",
	    deadletter_log_value(cf->method, method),
	    deadletter_log_value(cf->user_id, user), cf->last4, code,
	    cf->log_id[0] != '\0' ? ", log id " : "",
	    deadletter_log_value(cf->log_id, id));
	mgmt_schedule(0);
}

/* Start reading the methods of the next user to verify; 0 if none. */
static int
mgmt_verify_next(void)
{
	struct verify_req	 r;
	char			*url;

	mgmt->vwake = 0;
	if (verify_next(mgmt->vuser, (int64_t)time(NULL), &r) != STORE_OK) {
		mgmt->vwake = (time_t)r.not_before;
		return (0);
	}
	mgmt->vreasons = r.reasons;
	mgmt->vtries = r.tries;
	mgmt->job = MGMT_JOB_VERIFY;
	if (!mgmt_token_ok())
		return (1);
	url = mgmt_user_url(mgmt->vuser, NULL);
	/* The answer is dated now: what it lists was true then. */
	mgmt->vasked_ms = claims_clock_ms();
	mgmt_send(MGMT_METHODS, url, NULL);
	free(url);
	return (1);
}

/*
 * The methods of the user being verified: settle the claims.  A 404 that
 * says the user does not exist releases them; a 400 (Auth0 refuses the
 * user id) drops the request; anything else is retried with back-off.
 */
static void
mgmt_verify_done(struct mgmt_xfer *x, long code)
{
	struct verify_method	*m = NULL;
	struct verify_result	 r;
	size_t			 n = 0;
	char			*cause = NULL, why[160];
	char			 user[DEADLETTER_LOG_SIZE];
	int			 found = 1, rv;

	if (mgmt_renew_on_401(code))
		return;
	if (code == 400) {
		mgmt_succeeded();
		log_warnx("verify: Auth0 refuses user id %s (HTTP 400); not "
		    "verifying it", deadletter_log_value(mgmt->vuser, user));
		mgmt->st.v_dropped++;
		if (verify_drop(mgmt->vuser) != STORE_OK)
			mgmt_fail("the store is unavailable", 0);
		else
			mgmt_schedule(0);
		return;
	}
	if (code == 404 && verify_no_such_user(x->body, x->len))
		found = 0;
	else if (code != 200) {
		snprintf(why, sizeof why, "GET authentication methods: HTTP %ld",
		    code);
		mgmt_verify_failed(why, code);
		return;
	} else if (verify_methods(x->body != NULL ? x->body : "",
	    x->len, &m, &n, &cause) != 0) {
		snprintf(why, sizeof why, "GET authentication methods: %s",
		    cause);
		free(cause);
		mgmt_verify_failed(why, code);
		return;
	}
	mgmt_succeeded();
	rv = verify_settle(mgmt->vuser, mgmt->vreasons, m, n, found,
	    mgmt->vasked_ms, (int64_t)time(NULL), &r);
	free(m);
	if (rv != STORE_OK || claims_flush() != STORE_OK) {
		mgmt_fail("the store is unavailable", 0);
		return;
	}
	mgmt->st.v_done++;
	mgmt->st.v_activated += r.activated;
	mgmt->st.v_claimed += r.claimed;
	mgmt->st.v_released += r.released;
	mgmt->st.v_unsettled += r.unsettled;
	if (r.activated + r.claimed + r.released + r.unsettled > 0 || !found)
		log_info("verify: user %s%s: %zu phone method(s); %zu "
		    "activated, %zu claimed, %zu released, %zu unsettled",
		    deadletter_log_value(mgmt->vuser, user),
		    found ? "" : " does not exist", n,
		    r.activated, r.claimed, r.released, r.unsettled);
	else
		log_debug("verify: user %s: %zu phone method(s), nothing to "
		    "change", deadletter_log_value(mgmt->vuser, user), n);
	mgmt_schedule(0);
}

/*
 * A lookup of the user being verified failed.  A rate limit is the
 * tenant's: the same step is retried with back-off.  Any other answer
 * counts a try of this user, who waits behind the others (1 s doubling
 * with each try) and is given up after VERIFY_TRIES_MAX; a 5xx also backs
 * the client off.  One user never holds up the queue.
 */
static void
mgmt_verify_failed(const char *why, long code)
{
	char	user[DEADLETTER_LOG_SIZE];
	int64_t	wait;
	int	gave_up, tries = mgmt->vtries + 1;

	if (code == 429) {
		mgmt_fail(why, 1);
		return;
	}
	if (verify_retry(mgmt->vuser, tries, (int64_t)time(NULL), &gave_up,
	    &wait) != STORE_OK || claims_flush() != STORE_OK) {
		mgmt_fail("the store is unavailable", 0);
		return;
	}
	if (gave_up) {
		mgmt->st.v_gave_up++;
		log_warnx("verify: giving up on user %s after %d tries (%s); "
		    "its claims stay as they are",
		    deadletter_log_value(mgmt->vuser, user), tries, why);
	}
	if (code >= 500) {
		mgmt_fail(why, 0);
		return;
	}
	snprintf(mgmt->st.v_last_error, sizeof mgmt->st.v_last_error, "%s",
	    why);
	mgmt->st.v_failures++;
	if (!gave_up)
		log_warnx("verify: %s; user %s, try %d of %d, again in %llds "
		    "behind the others", why,
		    deadletter_log_value(mgmt->vuser, user), tries,
		    VERIFY_TRIES_MAX, (long long)wait);
	mgmt_schedule(0);
}

/*
 * Return 1 if more than reconcile_share of the rate-limit bucket is left,
 * or the reset is past; else 0, with *wait the seconds until the reset.
 */
static int
mgmt_share_left(int64_t *wait)
{
	time_t	now = time(NULL);

	if (reconcile_may_send(mgmt->rl_limit, mgmt->rl_left) ||
	    mgmt->rl_reset <= now)
		return (1);
	*wait = mgmt->rl_reset - now;
	if (*wait > MGMT_RESET_MAX)
		*wait = MGMT_RESET_MAX;
	return (0);
}

/*
 * Start the next request of the bootstrap; 0 if none now (*wait: seconds
 * until there may be one, -1 none).
 */
static int
mgmt_bootstrap_next(int64_t *wait)
{
	struct bootstrap_req	req;

	*wait = -1;
	if (!mgmt_share_left(wait))
		return (0);
	if (!bootstrap_next(mgmt->base_url, &req, wait))
		return (0);
	mgmt->job = MGMT_JOB_BOOTSTRAP;
	if (req.auth && !mgmt_token_ok()) {
		bootstrap_req_clear(&req);
		return (1);
	}
	/* The export's link is not the tenant's: no token goes there. */
	mgmt_send_req(MGMT_BOOT, req.url, req.post, req.auth, req.out);
	bootstrap_req_clear(&req);
	return (1);
}

/* An answer to the bootstrap: go on, or retry with back-off. */
static void
mgmt_bootstrap_done(struct mgmt_xfer *x, long code)
{
	char	why[256];
	int64_t	wait;

	if (x->out == NULL && mgmt_renew_on_401(code))
		return;
	why[0] = '\0';
	if (bootstrap_done(code, x->body, x->len, why, sizeof why,
	    &wait) != 0) {
		mgmt_fail(why, code == 429);
		return;
	}
	mgmt_succeeded();
	mgmt_schedule((int)wait);
}

/*
 * Start reading the methods of the next user to reconcile; 0 if none now
 * (*wait: seconds until there may be one, -1 none).  Waits for the
 * rate-limit reset while less than reconcile_share of the bucket is left.
 */
static int
mgmt_reconcile_next(int64_t *wait)
{
	time_t	 now = time(NULL);
	char	*url;

	*wait = -1;
	if (!mgmt_share_left(wait))
		return (0);
	if (!reconcile_next((int64_t)now, mgmt->ruser, wait))
		return (0);
	mgmt->job = MGMT_JOB_RECONCILE;
	if (!mgmt_token_ok())
		return (1);
	url = mgmt_user_url(mgmt->ruser, NULL);
	mgmt_send(MGMT_METHODS, url, NULL);
	free(url);
	return (1);
}

/*
 * The methods of the user being reconciled: settle the claims.  A 404
 * that says the user does not exist releases them; a 400 (Auth0 refuses
 * the user id) moves on; anything else is retried with back-off.
 */
static void
mgmt_reconcile_done(struct mgmt_xfer *x, long code)
{
	struct verify_method	*m = NULL;
	size_t			 n = 0;
	char			*cause = NULL, why[160];
	int			 found = 1, skip = 0, rv;

	if (mgmt_renew_on_401(code))
		return;
	if (code == 400)
		skip = 1;
	else if (code == 404 && verify_no_such_user(x->body, x->len))
		found = 0;
	else if (code != 200) {
		snprintf(why, sizeof why, "GET authentication methods: HTTP %ld",
		    code);
		mgmt_fail(why, code == 429);
		return;
	} else if (verify_methods(x->body != NULL ? x->body : "",
	    x->len, &m, &n, &cause) != 0) {
		snprintf(why, sizeof why, "GET authentication methods: %s",
		    cause);
		free(cause);
		mgmt_fail(why, 0);
		return;
	}
	mgmt_succeeded();
	rv = reconcile_settle(m, n, found, skip);
	free(m);
	if (rv != 0) {
		mgmt_fail("the store is unavailable", 0);
		return;
	}
	mgmt_schedule(0);
}

/*
 * SIGHUP: read the client secret again; a new one drops the cached token
 * so that the next request asks for a token with it.
 */
int
mgmt_reload(char **cause)
{
	char	*secret;
	size_t	 len;

	if (mgmt == NULL)
		return (0);
	if (conf_read_secret(mgmt->conf->auth0_client_secret_file, &secret,
	    &len, cause) != 0)
		return (-1);
	if (len == mgmt->secretlen && memcmp(secret, mgmt->secret, len) == 0) {
		explicit_bzero(secret, len);
		free(secret);
		return (0);
	}
	explicit_bzero(mgmt->secret, mgmt->secretlen);
	free(mgmt->secret);
	mgmt->secret = secret;
	mgmt->secretlen = len;
	if (mgmt->token != NULL)
		explicit_bzero(mgmt->token, strlen(mgmt->token));
	free(mgmt->token);
	mgmt->token = NULL;
	log_info("Management API: client secret changed; a new token will be "
	    "asked for");
	return (0);
}
