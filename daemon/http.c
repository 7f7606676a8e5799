/*
 * The HTTP server: evhttp with bounds, routing, bearer authentication and
 * replies sent only after the store's log is on disk.
 *
 * Durability without one fsync per request: handlers commit with
 * DB_TXN_NOSYNC and queue their answer with http_reply().  The first
 * queued answer activates flush_ev.  libevent runs callbacks activated
 * during a loop iteration after those already active, so flush_ev runs once
 * after every request that was ready in this iteration has been handled; it
 * asks the store's flusher thread to make the log durable, and the answers
 * queued so far go out when it says so.  While that fsync runs the loop
 * goes on: the requests it handles meanwhile queue their answers for the
 * next flush, asked as soon as this one is done.  So the disk and the CPU
 * work at the same time, and a slow fsync makes batches larger, not the
 * loop idle.  Without a flusher (it failed to start) each batch is flushed
 * in place, as before.
 *
 * evhttp 2.1 has only inactivity timeouts and no connection limit, so we
 * create each connection's bufferevent ourselves (evhttp_set_bevcb) and
 * track it: a once-a-second timer cuts off a connection whose request has
 * not arrived complete within request_timeout of its first byte (slow
 * clients).  With max_connections open, the one that has waited longest
 * without a request being answered on it (idle keep-alive, or never sent
 * a complete request) is closed to make room for the next: so thousands
 * of idle connections cannot keep Auth0 or a health check out.  Only when
 * every connection has a request being answered is the listener off.
 *
 * Knowing when evhttp frees a connection: right after the bufferevent
 * callback returns, evhttp has made the connection and set itself as the
 * bufferevent's callback argument, so attach_ev (activated by the
 * callback, run later in the same loop iteration) reads the connection
 * from there and sets a close callback on it.  evhttp calls that before
 * it frees the bufferevent, and we forget the connection then.  Until it
 * is attached we hold a reference, so the pointer stays valid; we drop it
 * in the close callback, so that evhttp's free really frees and removes
 * the socket's events before the descriptor is closed and reused.
 */
#include "config.h"

#include <sys/types.h>
#include <sys/queue.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include <netinet/in.h>
#include <arpa/inet.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>

#include "log.h"
#include "phoneclaimd.h"
#include "xmalloc.h"

#define HTTP_MAX_HEADERS_SIZE	16384
/* Descriptors besides connections: store, listener, status socket, curl. */
#define HTTP_SPARE_FILES	256
/* The listen backlog at least (the kernel caps it at net.core.somaxconn). */
#define HTTP_MIN_BACKLOG	4096
#define HTTP_ALL_METHODS	(EVHTTP_REQ_GET | EVHTTP_REQ_POST | \
    EVHTTP_REQ_HEAD | EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE | \
    EVHTTP_REQ_OPTIONS | EVHTTP_REQ_TRACE | EVHTTP_REQ_CONNECT | \
    EVHTTP_REQ_PATCH)

struct http_conn {
	struct bufferevent	*bev;
	struct http		*http;
	int64_t			 deadline;	/* ms; 0: idle, no request */
	int64_t			 since;		/* ms: opened or last answered */
	int			 busy;		/* requests being answered */
	int			 closing;	/* chosen to make room */
	int			 attached;	/* close callback set */
	int			 idle;		/* on the idle list */
	TAILQ_ENTRY(http_conn)	 entry;
	TAILQ_ENTRY(http_conn)	 idle_entry;
};
TAILQ_HEAD(http_conns, http_conn);

struct http_pending {
	struct evhttp_request	*req;
	int			 code;
	char			*body;
	int			 endpoint;	/* enum metrics_endpoint */
	int64_t			 start;		/* us, when it arrived */
	TAILQ_ENTRY(http_pending) entry;
};
TAILQ_HEAD(http_pendings, http_pending);

struct http_route {
	const char	*path;
	int		 methods;
	const char	*allow;
	void		(*cb)(struct evhttp_request *, void *);
	int		 endpoint;	/* enum metrics_endpoint */
	int		 token;		/* a write: its token; else -1 */
};

struct http {
	struct event_base		*base;
	const struct conf		*conf;
	struct store			*store;
	struct evhttp			*evh;
	struct evhttp_bound_socket	*bound;
	struct evconnlistener		*listener;
	int				 listener_off;
	int				 stopping;
	char				 address[128];
	struct event			*tick_ev;
	struct event			*flush_ev;
	struct event			*attach_ev;
	struct http_conns		 conns;
	struct http_conns		 idle;		/* longest idle first */
	size_t				 nconns;
	size_t				 unattached;
	int				 freeing;
	struct http_pendings		 pending;	/* no flush asked */
	struct http_pendings		 flushing;	/* the one in flight */
	int				 flush_busy;
	struct worker			*worker;	/* NULL: none */
	struct tls			*tls;		/* NULL: plain HTTP */
	struct evhttp_request		*cur_req;	/* in http_route_cb */
	int				 cur_endpoint;
	int64_t				 cur_start;	/* us */
	unsigned char			 token[2][HASH_DIGEST_LEN];
	int				 have_token[2];
};

static struct http	*http_instance;

/*
 * /healthz and /metrics need no token: they tell nothing about users, and
 * are meant for a scraper on the loopback or behind the reverse proxy.
 */
static const struct http_route http_routes[] = {
	{ "/v1/claims", EVHTTP_REQ_POST, "POST", api_claims_cb,
	  METRICS_EP_CLAIMS, HTTP_TOKEN_API },
	{ "/v1/log-stream", EVHTTP_REQ_POST, "POST", logstream_http_cb,
	  METRICS_EP_LOG_STREAM, HTTP_TOKEN_LOG_STREAM },
	{ "/healthz", EVHTTP_REQ_GET | EVHTTP_REQ_HEAD, "GET, HEAD",
	  api_healthz_cb, METRICS_EP_HEALTHZ, -1 },
	{ "/metrics", EVHTTP_REQ_GET | EVHTTP_REQ_HEAD, "GET, HEAD",
	  metrics_http_cb, METRICS_EP_METRICS, -1 },
};

static int64_t	 http_now(void);
static int64_t	 http_usec(void);
static void	 http_raise_nofile(const struct conf *);
static int	 http_bind(struct http *, char **);
static struct bufferevent *http_bev_cb(struct event_base *, void *);
static void	 http_input_cb(struct evbuffer *,
		     const struct evbuffer_cb_info *, void *);
static void	 http_tls_record_cb(void *);
static int64_t	 http_deadline(struct http *);
static void	 http_tick_cb(evutil_socket_t, short, void *);
static void	 http_attach_cb(evutil_socket_t, short, void *);
static void	 http_close_cb(struct evhttp_connection *, void *);
static void	 http_conn_free(struct http *, struct http_conn *);
static void	 http_listener_update(struct http *);
static void	 http_listener_error_cb(struct evconnlistener *, void *);
static void	 http_request_started(struct http *, struct evhttp_request *);
static void	 http_request_done_cb(struct evhttp_request *, void *);
static int	 http_make_room(struct http *);
static void	 http_idle_add(struct http *, struct http_conn *);
static void	 http_idle_del(struct http *, struct http_conn *);
static int	 http_framing_ok(struct evhttp_request *);
static void	 http_route_cb(struct evhttp_request *, void *);
static void	 http_flush_cb(evutil_socket_t, short, void *);
static void	 http_flushed_cb(int, void *);
static void	 http_flushed(struct http *, int);
static void	 http_started(struct http *, struct evhttp_request *, int *,
		     int64_t *);
static void	 http_send(struct evhttp_request *, int, const char *,
		     const char *, int, int64_t);

/* Milliseconds on the monotonic clock. */
static int64_t
http_now(void)
{
	struct timespec	ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ((int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000);
}

/* Microseconds on the monotonic clock, for request latency. */
static int64_t
http_usec(void)
{
	struct timespec	ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ((int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000);
}

/* The deadline of a request that starts now. */
static int64_t
http_deadline(struct http *h)
{
	return (http_now() + h->conf->request_timeout * 1000);
}

/*
 * Make room for max_connections open descriptors.  The usual soft limit,
 * 1024, is below the default max_connections plus what the store and the
 * rest need: accept() then fails with EMFILE long before the cap, the
 * listener pauses a second at a time, and new clients (health checks too)
 * wait in the backlog.  Raise the soft limit as far as the hard one allows
 * (systemd's unit sets both), and say so if that is not far enough.
 */
static void
http_raise_nofile(const struct conf *conf)
{
	struct rlimit	rl;
	rlim_t		want;

	want = (rlim_t)conf->max_connections + HTTP_SPARE_FILES;
	if (getrlimit(RLIMIT_NOFILE, &rl) != 0) {
		log_warn("getrlimit");
		return;
	}
	if (rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur >= want)
		return;
	if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < want) {
		log_warnx("open files are limited to %llu: fewer than "
		    "max_connections (%lld) can be open at once",
		    (unsigned long long)rl.rlim_max, conf->max_connections);
		want = rl.rlim_max;
	}
	if (want <= rl.rlim_cur)
		return;
	rl.rlim_cur = want;
	if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
		log_warn("setrlimit");
	else
		log_debug("open files limit raised to %llu",
		    (unsigned long long)want);
}

/* Bind the listen address (host:port or [v6]:port); port 0 picks one. */
static int
http_bind(struct http *h, char **cause)
{
	struct sockaddr_storage	 ss;
	socklen_t		 sslen = sizeof ss;
	char			 host[128], *colon, addr[INET6_ADDRSTRLEN];
	unsigned short		 port;
	evutil_socket_t		 fd;

	if ((size_t)snprintf(host, sizeof host, "%s", h->conf->listen) >=
	    sizeof host) {
		xasprintf(cause, "listen address too long");
		return (-1);
	}
	colon = strrchr(host, ':');
	*colon = '\0';
	port = (unsigned short)strtoul(colon + 1, NULL, 10);
	if (host[0] == '[') {
		host[strlen(host) - 1] = '\0';
		memmove(host, host + 1, strlen(host));
	}
	h->bound = evhttp_bind_socket_with_handle(h->evh, host, port);
	if (h->bound == NULL) {
		xasprintf(cause, "cannot listen on %s: %s", h->conf->listen,
		    strerror(errno));
		return (-1);
	}
	h->listener = evhttp_bound_socket_get_listener(h->bound);
	evconnlistener_set_error_cb(h->listener, http_listener_error_cb);
	fd = evhttp_bound_socket_get_fd(h->bound);
	/*
	 * evhttp listens with a backlog of 128.  A burst of connections
	 * (thousands of idle ones opened at once) fills it between two
	 * accept rounds, and the kernel then drops the SYNs of everyone else:
	 * a health check waits a second for its retransmission.  listen()
	 * again on a listening socket sets a new backlog (Linux, BSDs).
	 */
	if (listen(fd, h->conf->max_connections > HTTP_MIN_BACKLOG ?
	    (int)h->conf->max_connections : HTTP_MIN_BACKLOG) != 0)
		log_warn("listen backlog");
	if (getsockname(fd, (struct sockaddr *)&ss, &sslen) != 0) {
		xasprintf(cause, "getsockname: %s", strerror(errno));
		return (-1);
	}
	if (ss.ss_family == AF_INET6) {
		struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;

		inet_ntop(AF_INET6, &s6->sin6_addr, addr, sizeof addr);
		snprintf(h->address, sizeof h->address, "[%s]:%u", addr,
		    ntohs(s6->sin6_port));
	} else {
		struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;

		inet_ntop(AF_INET, &s4->sin_addr, addr, sizeof addr);
		snprintf(h->address, sizeof h->address, "%s:%u", addr,
		    ntohs(s4->sin_port));
	}
	return (0);
}

/* Create the HTTP server and start listening. */
struct http *
http_init(struct event_base *base, const struct conf *conf,
    struct store *store, char **cause)
{
	struct http	*h;
	struct timeval	 tv = { 1, 0 };
	char		*flusher;

	http_raise_nofile(conf);
	h = xcalloc(1, sizeof *h);
	h->base = base;
	h->conf = conf;
	h->store = store;
	TAILQ_INIT(&h->conns);
	TAILQ_INIT(&h->idle);
	TAILQ_INIT(&h->pending);
	TAILQ_INIT(&h->flushing);
	if ((h->evh = evhttp_new(base)) == NULL)
		fatalx("evhttp_new");
	evhttp_set_max_headers_size(h->evh, HTTP_MAX_HEADERS_SIZE);
	evhttp_set_max_body_size(h->evh, conf->max_body_size);
	evhttp_set_timeout(h->evh, (int)conf->request_timeout);
	evhttp_set_allowed_methods(h->evh, HTTP_ALL_METHODS);
	evhttp_set_default_content_type(h->evh, "application/json");
	evhttp_set_bevcb(h->evh, http_bev_cb, h);
	evhttp_set_gencb(h->evh, http_route_cb, h);
	if (http_bind(h, cause) != 0) {
		http_free(h);
		return (NULL);
	}
	h->tick_ev = event_new(base, -1, EV_PERSIST, http_tick_cb, h);
	h->flush_ev = event_new(base, -1, 0, http_flush_cb, h);
	h->attach_ev = event_new(base, -1, 0, http_attach_cb, h);
	if (h->tick_ev == NULL || h->flush_ev == NULL || h->attach_ev == NULL)
		fatalx("event_new");
	evtimer_add(h->tick_ev, &tv);
	if (store_flusher_start(store, base, http_flushed_cb, h, &flusher) !=
	    0) {
		log_warnx("%s; flushing the log on the event loop", flusher);
		free(flusher);
	}
	if ((h->worker = worker_start(base, &flusher)) == NULL) {
		log_warnx("%s; parsing numbers on the event loop", flusher);
		free(flusher);
	}
	http_instance = h;
	return (h);
}

/* Stop listening, answer what is queued, and free the server. */
void
http_free(struct http *h)
{
	struct http_conn	*c;

	if (h == NULL)
		return;
	/* Jobs in flight are dropped: evhttp_free frees their requests. */
	worker_stop(h->worker);
	h->worker = NULL;
	if (h->flush_ev != NULL) {
		/* The flusher's answer will not be waited for. */
		store_flusher_stop(h->store);
		TAILQ_CONCAT(&h->flushing, &h->pending, entry);
		if (!TAILQ_EMPTY(&h->flushing))
			http_flushed(h, store_flush(h->store) == STORE_OK);
		event_free(h->flush_ev);
	}
	if (h->tick_ev != NULL)
		event_free(h->tick_ev);
	h->freeing = 1;
	/* evhttp_free calls our close callback for each connection. */
	if (h->evh != NULL)
		evhttp_free(h->evh);
	while ((c = TAILQ_FIRST(&h->conns)) != NULL)
		http_conn_free(h, c);
	if (h->attach_ev != NULL)
		event_free(h->attach_ev);
	explicit_bzero(h->token, sizeof h->token);
	if (http_instance == h)
		http_instance = NULL;
	free(h);
}

/* Stop taking new connections, for a graceful stop. */
void
http_stop_accepting(struct http *h)
{
	evconnlistener_disable(h->listener);
	h->listener_off = 1;
	h->stopping = 1;
}

/* Return the address the server listens on, as host:port. */
const char *
http_bound_address(struct http *h)
{
	return (h->address);
}

/* Serve HTTPS with tls from now on (before the loop runs): NULL for HTTP. */
void
http_set_tls(struct http *h, struct tls *tls)
{
	h->tls = tls;
}

/* Return the configuration the server runs with. */
const struct conf *
http_conf(struct http *h)
{
	return (h->conf);
}

/*
 * Return 1 while the store accepts commits; in a replication group, while
 * this node is the master, or a replica with the store open that knows a
 * master to forward writes to.
 */
int
http_store_ok(struct http *h)
{
	return (!store_failed(h->store) && store_ready(h->store) &&
	    repl_serving());
}

/* Replace the tokens; only their digests are kept. */
void
http_set_tokens(struct http *h, const char *api, size_t apilen,
    const char *stream, size_t streamlen)
{
	hash_digest(api, apilen, h->token[HTTP_TOKEN_API]);
	hash_digest(stream, streamlen, h->token[HTTP_TOKEN_LOG_STREAM]);
	h->have_token[HTTP_TOKEN_API] = 1;
	h->have_token[HTTP_TOKEN_LOG_STREAM] = 1;
}

/*
 * Check the Authorization header in constant time.  The API token comes as
 * "Bearer <token>"; the log stream's header value is compared whole, as
 * Auth0 sends it verbatim.
 */
int
http_authorised(struct http *h, struct evhttp_request *req, int which)
{
	const char	*v;
	unsigned char	 digest[HASH_DIGEST_LEN];

	if (!h->have_token[which])
		return (0);
	v = evhttp_find_header(evhttp_request_get_input_headers(req),
	    "Authorization");
	if (v == NULL)
		return (0);
	if (which == HTTP_TOKEN_API) {
		if (strncmp(v, "Bearer ", 7) != 0)
			return (0);
		v += 7;
	}
	hash_digest(v, strlen(v), digest);
	return (hash_digest_equal(digest, h->token[which]));
}

/* A new connection: make its bufferevent and start tracking it. */
static struct bufferevent *
http_bev_cb(struct event_base *base, void *arg)
{
	struct http		*h = arg;
	struct http_conn	*c;

	/*
	 * Without BEV_OPT_CLOSE_ON_FREE evhttp closes the socket itself when
	 * it frees the connection.  A TLS bufferevent has the option, and
	 * closes the socket and frees its SSL when it is destroyed (tls.c).
	 */
	c = xcalloc(1, sizeof *c);
	if (h->tls != NULL)
		c->bev = tls_bufferevent(h->tls, base, http_tls_record_cb, c);
	else
		c->bev = bufferevent_socket_new(base, -1, 0);
	if (c->bev == NULL)
		fatalx("cannot make the bufferevent of a connection");
	bufferevent_incref(c->bev);
	c->http = h;
	c->deadline = http_deadline(h);
	c->since = http_now();
	evbuffer_add_cb(bufferevent_get_input(c->bev), http_input_cb, c);
	TAILQ_INSERT_TAIL(&h->conns, c, entry);
	h->nconns++;
	h->unattached++;
	event_active(h->attach_ev, EV_TIMEOUT, 0);
	/* One over the limit: an idle one goes (this one is not attached). */
	if (h->nconns > (size_t)h->conf->max_connections)
		(void)http_make_room(h);
	http_listener_update(h);
	return (c->bev);
}

/* Set a close callback on each connection evhttp made since last time. */
static void
http_attach_cb(evutil_socket_t fd, short events, void *arg)
{
	struct http		*h = arg;
	struct http_conn	*c, *next;
	bufferevent_event_cb	 eventcb;
	void			*evcon;

	(void)fd;
	(void)events;
	for (c = TAILQ_FIRST(&h->conns); c != NULL && h->unattached > 0;
	    c = next) {
		next = TAILQ_NEXT(c, entry);
		if (c->attached)
			continue;
		h->unattached--;
		bufferevent_getcb(c->bev, NULL, NULL, &eventcb, &evcon);
		if (eventcb == NULL || evcon == NULL) {
			/* evhttp gave up on it already. */
			http_conn_free(h, c);
			continue;
		}
		c->attached = 1;
		http_idle_add(h, c);
		evhttp_connection_set_closecb(evcon, http_close_cb, c);
	}
	http_listener_update(h);
}

/* evhttp is about to free a connection: forget it and drop our reference. */
static void
http_close_cb(struct evhttp_connection *evcon, void *arg)
{
	struct http_conn	*c = arg;
	struct http		*h = c->http;

	(void)evcon;
	http_conn_free(h, c);
	if (!h->freeing)
		http_listener_update(h);
}

/* Bytes arrived: an idle connection starts its request clock. */
static void
http_input_cb(struct evbuffer *buf, const struct evbuffer_cb_info *info,
    void *arg)
{
	struct http_conn	*c = arg;

	(void)buf;
	if (info->n_added > 0 && c->deadline == 0)
		c->deadline = http_deadline(c->http);
}

/*
 * A TLS record started to arrive: an idle connection starts its request
 * clock, so that a record sent a byte at a time is cut off too.
 */
static void
http_tls_record_cb(void *arg)
{
	struct http_conn	*c = arg;

	if (c->deadline == 0)
		c->deadline = http_deadline(c->http);
}

/* A complete request arrived on a connection: stop its clock. */
static void
http_request_started(struct http *h, struct evhttp_request *req)
{
	struct evhttp_connection	*evcon;
	struct bufferevent		*bev;
	struct http_conn		*c;

	if ((evcon = evhttp_request_get_connection(req)) == NULL)
		return;
	bev = evhttp_connection_get_bufferevent(evcon);
	TAILQ_FOREACH(c, &h->conns, entry) {
		if (c->bev != bev)
			continue;
		/* Pipelined bytes already buffered start the next clock. */
		if (evbuffer_get_length(bufferevent_get_input(bev)) > 0)
			c->deadline = http_deadline(h);
		else
			c->deadline = 0;
		c->busy++;
		http_idle_del(h, c);
		evhttp_request_set_on_complete_cb(req, http_request_done_cb, c);
		return;
	}
}

/*
 * An answer was written (evhttp calls this before it frees the request,
 * and before it frees the connection if it closes it).
 */
static void
http_request_done_cb(struct evhttp_request *req, void *arg)
{
	struct http_conn	*c = arg;

	(void)req;
	if (c->busy > 0)
		c->busy--;
	c->since = http_now();
	http_idle_del(c->http, c);
	http_idle_add(c->http, c);
	if (c->http->listener_off)
		http_listener_update(c->http);
}

/*
 * A connection came in over max_connections: close the one that has gone
 * longest without a request being answered on it.  Return 1 if one is
 * closing (its slot is free once evhttp has freed it, later in this loop
 * iteration), 0 if every connection has a request in hand.
 */
static int
http_make_room(struct http *h)
{
	struct http_conn	*oldest;

	if ((oldest = TAILQ_FIRST(&h->idle)) == NULL)
		return (0);
	log_debug("%zu connections open: closing one idle for %llds",
	    h->nconns, (long long)(http_now() - oldest->since) / 1000);
	metrics_connection_closed();
	http_idle_del(h, oldest);
	oldest->closing = 1;
	oldest->deadline = 0;
	/* evhttp treats this like a read error and frees it. */
	bufferevent_trigger_event(oldest->bev,
	    BEV_EVENT_READING | BEV_EVENT_ERROR, BEV_TRIG_DEFER_CALLBACKS);
	return (1);
}

/*
 * The idle list holds the connections with no request in hand, in the
 * order they became idle (opened, or last answered), so that the one idle
 * longest is first.  A connection being closed is not on it.
 */
static void
http_idle_add(struct http *h, struct http_conn *c)
{
	if (c->idle || c->busy > 0 || !c->attached || c->closing)
		return;
	TAILQ_INSERT_TAIL(&h->idle, c, idle_entry);
	c->idle = 1;
}

/* Take a connection off the idle list, if it is on it. */
static void
http_idle_del(struct http *h, struct http_conn *c)
{
	if (!c->idle)
		return;
	TAILQ_REMOVE(&h->idle, c, idle_entry);
	c->idle = 0;
}

/* Forget a connection and drop our reference to its bufferevent. */
static void
http_conn_free(struct http *h, struct http_conn *c)
{
	http_idle_del(h, c);
	TAILQ_REMOVE(&h->conns, c, entry);
	h->nconns--;
	evbuffer_remove_cb(bufferevent_get_input(c->bev), http_input_cb, c);
	if (h->tls != NULL)
		tls_forget(c->bev);
	bufferevent_decref(c->bev);
	free(c);
}

/*
 * Listen while fewer than max_connections are open, or while one of them
 * is idle and could make room for a new one (http_bev_cb closes it then).
 */
static void
http_listener_update(struct http *h)
{
	int	full = h->nconns >= (size_t)h->conf->max_connections &&
		    TAILQ_EMPTY(&h->idle);

	if (full && !h->listener_off) {
		evconnlistener_disable(h->listener);
		h->listener_off = 1;
		log_warnx("%zu connections open, each with a request in hand: "
		    "not accepting more", h->nconns);
	} else if (!full && h->listener_off && !h->stopping) {
		evconnlistener_enable(h->listener);
		h->listener_off = 0;
		log_info("accepting connections again");
	}
}

/*
 * accept() failed with something other than EAGAIN/EINTR (EMFILE, ENFILE,
 * ENOBUFS): pause the listener until the next tick instead of spinning.
 * The callback's argument belongs to evhttp, hence http_instance.
 */
static void
http_listener_error_cb(struct evconnlistener *l, void *arg)
{
	(void)arg;
	log_warn("accept");
	evconnlistener_disable(l);
	if (http_instance != NULL)
		http_instance->listener_off = 1;
}

/* Once a second: cut off slow requests and mind the listener. */
static void
http_tick_cb(evutil_socket_t fd, short events, void *arg)
{
	struct http		*h = arg;
	struct http_conn	*c;
	int64_t			 now = http_now();

	(void)fd;
	(void)events;
	/* The error callback is deferred, so the list stays as it is here. */
	TAILQ_FOREACH(c, &h->conns, entry) {
		if (c->deadline == 0 || now < c->deadline)
			continue;
		log_debug("request not complete within %llds: closing",
		    h->conf->request_timeout);
		c->deadline = 0;
		/* evhttp treats this like a read error and frees it. */
		bufferevent_trigger_event(c->bev,
		    BEV_EVENT_READING | BEV_EVENT_ERROR, BEV_TRIG_DEFER_CALLBACKS);
	}
	http_listener_update(h);
}

/*
 * Content-Length twice with different values leaves the end of the request
 * unknown (RFC 9112, section 6.3): evhttp read the body by the first, a
 * proxy in front of us may have used the other and sent what follows as a
 * request of its own (request smuggling).  Such a request is refused and
 * its connection closed, so that no byte after it is read as a request.
 * Transfer-Encoding with Content-Length evhttp refuses itself.
 */
static int
http_framing_ok(struct evhttp_request *req)
{
	struct evkeyvalq	*headers = evhttp_request_get_input_headers(req);
	struct evkeyval		*kv;
	const char		*length = NULL;

	TAILQ_FOREACH(kv, headers, next) {
		if (strcasecmp(kv->key, "Content-Length") != 0)
			continue;
		if (length == NULL)
			length = kv->value;
		else if (strcmp(length, kv->value) != 0)
			return (0);
	}
	return (1);
}

/*
 * Dispatch a request to its route: 404 or 405 when there is none.  The
 * route and the arrival time are kept while the handler runs, so that its
 * answer, sent now or queued, is counted under that endpoint.
 */
static void
http_route_cb(struct evhttp_request *req, void *arg)
{
	struct http			*h = arg;
	const struct evhttp_uri		*uri;
	const char			*path;
	size_t				 i;

	h->cur_req = req;
	h->cur_start = http_usec();
	h->cur_endpoint = METRICS_EP_OTHER;
	http_request_started(h, req);
	if (!http_framing_ok(req)) {
		evhttp_add_header(evhttp_request_get_output_headers(req),
		    "Connection", "close");
		http_error(h, req, 400, "invalid_request");
		h->cur_req = NULL;
		return;
	}
	uri = evhttp_request_get_evhttp_uri(req);
	path = uri != NULL ? evhttp_uri_get_path(uri) : NULL;
	for (i = 0; path != NULL &&
	    i < sizeof http_routes / sizeof http_routes[0]; i++) {
		if (strcmp(path, http_routes[i].path) != 0)
			continue;
		h->cur_endpoint = http_routes[i].endpoint;
		if ((evhttp_request_get_command(req) &
		    http_routes[i].methods) == 0) {
			evhttp_add_header(evhttp_request_get_output_headers(req),
			    "Allow", http_routes[i].allow);
			http_error(h, req, 405, "method_not_allowed");
		} else if (http_routes[i].token < 0 ||
		    !repl_forward(h, req, http_routes[i].token))
			http_routes[i].cb(req, h);
		h->cur_req = NULL;
		return;
	}
	http_error(h, req, 404, "not_found");
	h->cur_req = NULL;
}

/* The worker thread, or NULL. */
struct worker *
http_worker(struct http *h)
{
	return (h->worker);
}

/*
 * Keep what is known of the request being handled (its endpoint and
 * arrival), to answer it after the handler returned: see http_resume.
 */
void
http_suspend(struct http *h, struct evhttp_request *req,
    struct http_ctx *ctx)
{
	ctx->req = req;
	http_started(h, req, &ctx->endpoint, &ctx->start);
}

/* Handle a suspended request again: answers count as if in its handler. */
void
http_resume(struct http *h, const struct http_ctx *ctx)
{
	h->cur_req = ctx->req;
	h->cur_endpoint = ctx->endpoint;
	h->cur_start = ctx->start;
}

/* Done with a resumed request. */
void
http_resumed(struct http *h)
{
	h->cur_req = NULL;
}

/* The endpoint and arrival time of a request being answered. */
static void
http_started(struct http *h, struct evhttp_request *req, int *endpoint,
    int64_t *start)
{
	if (h != NULL && req == h->cur_req) {
		*endpoint = h->cur_endpoint;
		*start = h->cur_start;
	} else {
		/* Answered outside http_route_cb: nothing known. */
		*endpoint = METRICS_EP_OTHER;
		*start = http_usec();
	}
}

/*
 * Send an answer now, and count it under its endpoint with the time since
 * its request arrived.  The body ends with a newline.
 */
static void
http_send(struct evhttp_request *req, int code, const char *ctype,
    const char *body, int endpoint, int64_t start)
{
	struct evbuffer	*buf;
	size_t		 len = strlen(body);

	if ((buf = evbuffer_new()) == NULL)
		fatalx("evbuffer_new");
	evbuffer_add(buf, body, len);
	if (len == 0 || body[len - 1] != '\n')
		evbuffer_add(buf, "\n", 1);
	evhttp_add_header(evhttp_request_get_output_headers(req),
	    "Content-Type", ctype);
	evhttp_add_header(evhttp_request_get_output_headers(req),
	    "Cache-Control", "no-store");
	metrics_request(endpoint, code, http_usec() - start);
	evhttp_send_reply(req, code, NULL, buf);
	evbuffer_free(buf);
}

/*
 * Queue an answer that depends on a commit: it is sent by http_flush_cb
 * once the log is on disk (or replaced by 503 if the flush fails).
 */
void
http_reply(struct http *h, struct evhttp_request *req, int code,
    const char *body)
{
	struct http_pending	*p;

	p = xcalloc(1, sizeof *p);
	p->req = req;
	p->code = code;
	p->body = xstrdup(body);
	http_started(h, req, &p->endpoint, &p->start);
	TAILQ_INSERT_TAIL(&h->pending, p, entry);
	/*
	 * Activating an event that is already active does nothing; with a
	 * flush in flight, its answer asks for the next.
	 */
	if (!h->flush_busy)
		event_active(h->flush_ev, EV_TIMEOUT, 0);
}

/*
 * Send an answer that depends on no commit right away, with a Content-Type
 * of its own: it must not wait for, nor fail with, the log flush.
 */
void
http_reply_now(struct http *h, struct evhttp_request *req, int code,
    const char *ctype, const char *body)
{
	int	endpoint;
	int64_t	start;

	http_started(h, req, &endpoint, &start);
	http_send(req, code, ctype, body, endpoint, start);
}

/* Send an error that changed nothing: {"error": code}, right away. */
void
http_error(struct http *h, struct evhttp_request *req, int code,
    const char *error)
{
	char	body[96];
	int	endpoint;
	int64_t	start;

	if (code == 401)
		evhttp_add_header(evhttp_request_get_output_headers(req),
		    "WWW-Authenticate", "Bearer");
	snprintf(body, sizeof body, "{\"error\":\"%s\"}", error);
	http_started(h, req, &endpoint, &start);
	http_send(req, code, "application/json", body, endpoint, start);
}

/*
 * The end of a batch: ask for a flush covering its answers, unless one is
 * in flight (its answer asks for the next).  Without the flusher thread,
 * flush here and answer.
 */
static void
http_flush_cb(evutil_socket_t fd, short events, void *arg)
{
	struct http	*h = arg;

	(void)fd;
	(void)events;
	if (h->flush_busy || TAILQ_EMPTY(&h->pending))
		return;
	TAILQ_CONCAT(&h->flushing, &h->pending, entry);
	if (store_flush_async(h->store) == 0) {
		h->flush_busy = 1;
		return;
	}
	http_flushed(h, store_flush(h->store) == STORE_OK);
}

/* The flusher's answer: send the answers it covers, then ask again. */
static void
http_flushed_cb(int ok, void *arg)
{
	struct http	*h = arg;

	h->flush_busy = 0;
	http_flushed(h, ok);
	if (!TAILQ_EMPTY(&h->pending))
		event_active(h->flush_ev, EV_TIMEOUT, 0);
}

/* Send the answers of a flush that ended (503 if it failed). */
static void
http_flushed(struct http *h, int ok)
{
	struct http_pending	*p;

	if (!ok)
		log_warnx("log flush failed: answering 503");
	while ((p = TAILQ_FIRST(&h->flushing)) != NULL) {
		TAILQ_REMOVE(&h->flushing, p, entry);
		if (ok)
			http_send(p->req, p->code, "application/json",
			    p->body, p->endpoint, p->start);
		else
			http_send(p->req, 503, "application/json",
			    "{\"error\":\"unavailable\"}", p->endpoint,
			    p->start);
		free(p->body);
		free(p);
	}
}
