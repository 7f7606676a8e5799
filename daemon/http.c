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
 * Clients that do not read their answers: evhttp writes one answer at a
 * time and reads the next request only once the kernel has taken it, so
 * a connection's output holds one answer at most (HTTP_MAX_UNREAD is a
 * guard).  While an answer waits there, evhttp still reads the input (to
 * see a close), so the input is bounded then (HTTP_UNREAD_INPUT), lest a
 * client that pipelines and never reads fill our memory.  An answer may
 * wait request_timeout in all to be written; one that has waited
 * HTTP_UNREAD_GRACE makes its connection the first to go when room is
 * needed, before any idle one, so such clients cannot keep the listener
 * off either.
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
#ifdef __GLIBC__
#include <malloc.h>
#endif
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
/* After a burst of this many body bytes, give free memory back. */
#define HTTP_TRIM_AFTER		(1024 * 1024)
/* glibc: blocks up to this come from the heap (its largest value). */
#define HTTP_MMAP_THRESHOLD	(32 * 1024 * 1024)
/* glibc: free memory at the heap's top kept for the next request. */
#define HTTP_TRIM_THRESHOLD	(64 * 1024 * 1024)
/* An answer left unread this long makes its connection first to close. */
#define HTTP_UNREAD_GRACE	1000		/* ms */
/* Input read while an answer waits unread (no more is read then). */
#define HTTP_UNREAD_INPUT	(64 * 1024)
/* An answer is a few KiB at most: output past this is never left. */
#define HTTP_MAX_UNREAD		(1024 * 1024)
/* What evhttp reads in place of a refused request: it has no body. */
#define HTTP_REFUSED_REQUEST	"GET / HTTP/1.1\r\nConnection: close\r\n\r\n"
#define HTTP_REFUSED_CHUNK	"\r\n0\r\n\r\n"
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
	int64_t			 unread;	/* ms: output waits since; 0 */
	struct frame		 frame;		/* where its input is */
	struct evbuffer		*hold;		/* a unit kept from evhttp */
	int			 holding;	/* a unit is open */
	int			 editing;	/* our own input changes */
	int			 discard;	/* refused: drop all input */
	size_t			 passed;	/* request heads given */
	size_t			 started;	/* requests handed to us */
	size_t			 refuse_at;	/* that one, 0: none */
	int			 refuse_code;
	const char		*refuse_error;
	int			 endpoint;	/* of the last head */
	int			 refuse_endpoint;
	uint64_t		 body;		/* chunk bytes so far */
	uint64_t		*res;		/* body bytes reserved */
	size_t			 nres;		/* per request given */
	size_t			 ressize;
	TAILQ_ENTRY(http_conn)	 entry;
	TAILQ_ENTRY(http_conn)	 idle_entry;
	TAILQ_ENTRY(http_conn)	 unread_entry;
};
TAILQ_HEAD(http_conns, http_conn);

struct http_pending {
	struct evhttp_request	*req;
	int			 code;
	const char		*ctype;		/* a constant */
	char			*body;
	int			 endpoint;	/* enum metrics_endpoint */
	int64_t			 start;		/* us, when it arrived */
	uint64_t		 batch;		/* its flush, once asked */
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
	struct http_conns		 unread;	/* waited longest 1st */
	size_t				 nconns;
	size_t				 unattached;
	int				 freeing;
	struct http_pendings		 pending;	/* no flush asked */
	struct http_pendings		 flushing;	/* flushes in flight */
	uint64_t			 flush_batches;	/* flushes asked */
	struct worker			*worker;	/* NULL: none */
	struct tls			*tls;		/* NULL: plain HTTP */
	struct evhttp_request		*cur_req;	/* in http_route_cb */
	int				 cur_endpoint;
	int64_t				 cur_start;	/* us */
	unsigned char			 token[2][HASH_DIGEST_LEN];
	int				 have_token[2];
	uint64_t			 body_mem;	/* reserved */
	uint64_t			 body_peak;	/* since a trim */
};

/* How http_frame_input changes a connection's input. */
struct http_edit {
	size_t		 start;		/* offset of the new bytes */
	struct evbuffer	*insert;	/* a held unit, back first */
	int		 cut;		/* HTTP_CUT_* */
	size_t		 keep;		/* new bytes before the cut */
	const char	*tail;		/* added after a drop */
};
#define HTTP_CUT_NONE	0
#define HTTP_CUT_HOLD	1		/* the rest is held */
#define HTTP_CUT_DROP	2		/* the rest is dropped */

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
static void	 http_output_cb(struct evbuffer *,
		    const struct evbuffer_cb_info *, void *);
static void	 http_unread_del(struct http *, struct http_conn *);
static void	 http_conn_close(struct http_conn *);
static int	 http_unread_stale(struct http *, int64_t);
static void	 http_tls_record_cb(void *);
static int64_t	 http_deadline(struct http *);
static void	 http_tick_cb(evutil_socket_t, short, void *);
static void	 http_attach_cb(evutil_socket_t, short, void *);
static void	 http_close_cb(struct evhttp_connection *, void *);
static void	 http_conn_free(struct http *, struct http_conn *);
static void	 http_listener_update(struct http *);
static void	 http_listener_error_cb(struct evconnlistener *, void *);
static struct http_conn *http_request_started(struct http *,
		     struct evhttp_request *);
static void	 http_frame_input(struct http_conn *, struct evbuffer *,
		     size_t);
static size_t	 http_frame_scan(struct http_conn *, struct evbuffer *,
		     size_t, size_t, int *);
static int	 http_frame_unit(struct http_conn *, struct evbuffer *,
		     size_t, size_t, struct http_edit *);
static int	 http_frame_head(struct http_conn *, const char *, size_t,
		     struct http_edit *);
static int	 http_frame_chunk(struct http_conn *, const char *, size_t,
		     struct http_edit *);
static int	 http_frame_token(struct http *, const struct frame_head *,
		     int *);
static int	 http_frame_refuse(struct http_conn *, int, const char *,
		     const char *, struct http_edit *);
static void	 http_frame_edit(struct http_conn *, struct evbuffer *,
		     const struct http_edit *);
static int	 http_reserve(struct http_conn *, uint64_t);
static void	 http_release(struct http_conn *, size_t);
static int	 http_token_ok(struct http *, int, const char *);
static void	 http_request_done_cb(struct evhttp_request *, void *);
static int	 http_make_room(struct http *);
static void	 http_idle_add(struct http *, struct http_conn *);
static void	 http_idle_del(struct http *, struct http_conn *);
static int	 http_framing_ok(struct evhttp_request *);
static void	 http_route_cb(struct evhttp_request *, void *);
static void	 http_malloc_setup(void);
static void	 http_flush_cb(evutil_socket_t, short, void *);
static void	 http_flushed_cb(int, void *);
static void	 http_flushed(struct http_pendings *, int);
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

/*
 * Keep the memory of one log-stream batch for the next.  A batch of 1,000
 * events is a body of about half a MiB, its copy made contiguous and its
 * JSON tree, a few MiB freed at once when it is done.  glibc's own rule
 * gives a block of that size its own mapping until one is freed, and
 * gives the heap's top back to the system past twice the largest block
 * freed: so every batch returned its memory and took it again, page by
 * page, one page fault each: 989 a batch, 123 with this (the rest are new
 * pages of the Berkeley DB cache), and the bench's stream went from about
 * 26,000 events/s to 40,000 (docs/performance.md).  Fixed
 * thresholds keep it in the heap while batches come; once the bodies are
 * gone, http_tick_cb still gives it back (malloc_trim).
 */
static void
http_malloc_setup(void)
{
#ifdef __GLIBC__
	if (mallopt(M_MMAP_THRESHOLD, HTTP_MMAP_THRESHOLD) != 1 ||
	    mallopt(M_TRIM_THRESHOLD, HTTP_TRIM_THRESHOLD) != 1)
		log_debug("mallopt: thresholds not taken");
#endif
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
	http_malloc_setup();
	h = xcalloc(1, sizeof *h);
	h->base = base;
	h->conf = conf;
	h->store = store;
	TAILQ_INIT(&h->conns);
	TAILQ_INIT(&h->idle);
	TAILQ_INIT(&h->unread);
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
	/* With threads > 1 the workers run whole claims (api.c). */
	if ((h->worker = worker_start(base, (int)conf->threads, &flusher)) ==
	    NULL) {
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
	/* A group's claims waiting for their turn are answered. */
	api_free();
	/* Jobs in flight are dropped: evhttp_free frees their requests. */
	worker_stop(h->worker);
	h->worker = NULL;
	if (h->flush_ev != NULL) {
		/* The flusher's answer will not be waited for. */
		store_flusher_stop(h->store);
		TAILQ_CONCAT(&h->flushing, &h->pending, entry);
		if (!TAILQ_EMPTY(&h->flushing))
			http_flushed(&h->flushing,
			    store_flush(h->store) == STORE_OK);
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
	return (http_token_ok(h, which, evhttp_find_header(
	    evhttp_request_get_input_headers(req), "Authorization")));
}

/* Check an Authorization value (NULL: none) as http_authorised does. */
static int
http_token_ok(struct http *h, int which, const char *v)
{
	unsigned char	 digest[HASH_DIGEST_LEN];

	if (!h->have_token[which] || v == NULL)
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
	frame_init(&c->frame);
	if ((c->hold = evbuffer_new()) == NULL)
		fatalx("evbuffer_new");
	c->deadline = http_deadline(h);
	c->since = http_now();
	evbuffer_add_cb(bufferevent_get_input(c->bev), http_input_cb, c);
	evbuffer_add_cb(bufferevent_get_output(c->bev), http_output_cb, c);
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

/*
 * Bytes arrived: an idle connection starts its request clock, and the new
 * bytes are followed before evhttp's read callback sees them (evbuffer
 * callbacks run first, and are not deferred for these bufferevents).
 */
static void
http_input_cb(struct evbuffer *buf, const struct evbuffer_cb_info *info,
    void *arg)
{
	struct http_conn	*c = arg;

	if (c->editing || info->n_added == 0)
		return;
	if (c->deadline == 0)
		c->deadline = http_deadline(c->http);
	http_frame_input(c, buf, info->n_added);
}

/*
 * A connection's output changed: an answer starts or stops waiting there
 * for the client to read it (see the comment at the top).
 */
static void
http_output_cb(struct evbuffer *buf, const struct evbuffer_cb_info *info,
    void *arg)
{
	struct http_conn	*c = arg;
	size_t			 len = evbuffer_get_length(buf);

	(void)info;
	if (len == 0) {
		http_unread_del(c->http, c);
		return;
	}
	if (c->closing)
		return;
	if (len > HTTP_MAX_UNREAD) {
		log_warnx("%zu bytes of output on one connection: closing it",
		    len);
		http_conn_close(c);
		return;
	}
	if (c->unread != 0)
		return;
	c->unread = http_now();
	TAILQ_INSERT_TAIL(&c->http->unread, c, unread_entry);
	bufferevent_setwatermark(c->bev, EV_READ, 0, HTTP_UNREAD_INPUT);
}

/* An answer no longer waits on a connection: read its input freely. */
static void
http_unread_del(struct http *h, struct http_conn *c)
{
	if (c->unread == 0)
		return;
	TAILQ_REMOVE(&h->unread, c, unread_entry);
	c->unread = 0;
	bufferevent_setwatermark(c->bev, EV_READ, 0, 0);
}

/* Whether an answer has waited unread long enough to close its connection. */
static int
http_unread_stale(struct http *h, int64_t now)
{
	struct http_conn	*c = TAILQ_FIRST(&h->unread);

	return (c != NULL && now - c->unread >= HTTP_UNREAD_GRACE);
}

/* Close a connection: evhttp treats this like a read error and frees it. */
static void
http_conn_close(struct http_conn *c)
{
	http_idle_del(c->http, c);
	http_unread_del(c->http, c);
	c->closing = 1;
	c->deadline = 0;
	bufferevent_trigger_event(c->bev, BEV_EVENT_READING | BEV_EVENT_ERROR,
	    BEV_TRIG_DEFER_CALLBACKS);
}

/*
 * Follow the added bytes at the end of a connection's input (frame.c).
 * A request head or chunk-size line that is not whole yet is moved aside
 * (c->hold), so that evhttp acts on none of it; once whole and checked it
 * goes back in its place, or the request is refused: the unit and all
 * that follows are dropped, and evhttp reads a request without a body
 * that http_route_cb answers with the refusal (and "Connection: close").
 */
static void
http_frame_input(struct http_conn *c, struct evbuffer *buf, size_t added)
{
	struct http_edit	 e;
	size_t			 len = evbuffer_get_length(buf), off, unit;
	int			 ev;

	memset(&e, 0, sizeof e);
	e.start = off = len - added;
	if (c->discard) {
		e.cut = HTTP_CUT_DROP;
		http_frame_edit(c, buf, &e);
		return;
	}
	unit = c->holding ? e.start : SIZE_MAX;
	while (off < len && c->frame.state != FRAME_OFF) {
		off += http_frame_scan(c, buf, off, len, &ev);
		if (ev == FRAME_HOLD)
			unit = off;
		else if (ev == FRAME_WHOLE) {
			if (http_frame_unit(c, buf, unit, off, &e) != 0)
				break;
			if (unit == e.start && c->holding) {
				if ((e.insert = evbuffer_new()) == NULL)
					fatalx("evbuffer_new");
				evbuffer_add_buffer(e.insert, c->hold);
			}
			c->holding = 0;
			/* A chunked body's first size line begins here. */
			unit = c->frame.state == FRAME_SIZE ? off : SIZE_MAX;
		}
	}
	if (e.cut == HTTP_CUT_NONE && unit != SIZE_MAX) {
		e.cut = HTTP_CUT_HOLD;
		e.keep = unit - e.start;
		c->holding = 1;
	}
	if (e.insert != NULL || e.cut != HTTP_CUT_NONE)
		http_frame_edit(c, buf, &e);
}

/* Feed frame_scan the bytes of buf from off to len, up to an event. */
static size_t
http_frame_scan(struct http_conn *c, struct evbuffer *buf, size_t off,
    size_t len, int *ev)
{
	struct evbuffer_ptr	 ptr;
	struct evbuffer_iovec	 v[8];
	size_t			 done = 0, n;
	int			 i, nv;

	*ev = FRAME_NONE;
	while (off + done < len) {
		if (evbuffer_ptr_set(buf, &ptr, off + done,
		    EVBUFFER_PTR_SET) != 0)
			break;
		nv = evbuffer_peek(buf, len - off - done, &ptr, v, 8);
		for (i = 0; i < nv && i < 8; i++) {
			n = v[i].iov_len;
			if (n > len - off - done)
				n = len - off - done;
			done += frame_scan(&c->frame, v[i].iov_base, n, ev);
			if (*ev != FRAME_NONE || c->frame.state == FRAME_OFF)
				return (done);
		}
	}
	return (done);
}

/*
 * A unit is whole: the held part and buf from unit to end.  Check it;
 * return 0 if it may go to evhttp, else -1 with the refusal in *e.
 */
static int
http_frame_unit(struct http_conn *c, struct evbuffer *buf, size_t unit,
    size_t end, struct http_edit *e)
{
	struct evbuffer_ptr	 ptr;
	size_t			 held = evbuffer_get_length(c->hold), len;
	char			*text;
	int			 rv;

	if (unit == SIZE_MAX)
		unit = e->start;
	len = held + (end - unit);
	text = xmalloc(len + 1);
	evbuffer_copyout(c->hold, text, held);
	if (evbuffer_ptr_set(buf, &ptr, unit, EVBUFFER_PTR_SET) != 0 ||
	    evbuffer_copyout_from(buf, &ptr, text + held, end - unit) !=
	    (ev_ssize_t)(end - unit))
		fatalx("evbuffer_copyout_from");
	text[len] = '\0';
	e->keep = unit - e->start;
	if (c->frame.state == FRAME_HEAD)
		rv = http_frame_head(c, text, len, e);
	else
		rv = http_frame_chunk(c, text, len, e);
	free(text);
	return (rv);
}

/*
 * A request head: plain framing (else 400), the token of its route if it
 * has one (else 401, before any of the body is read and without "100
 * Continue"), and room for its body among all bodies (else 503).
 */
static int
http_frame_head(struct http_conn *c, const char *text, size_t len,
    struct http_edit *e)
{
	struct http		*h = c->http;
	struct frame_head	 hd;
	uint64_t		 want = 0;

	c->passed++;
	c->body = 0;
	c->endpoint = METRICS_EP_OTHER;
	http_release(c, 0);	/* a slot for this request */
	if (frame_head(text, len, &hd) != 0)
		return (http_frame_refuse(c, 400, "invalid_request",
		    HTTP_REFUSED_REQUEST, e));
	if (!http_frame_token(h, &hd, &c->endpoint))
		return (http_frame_refuse(c, 401, "unauthorized",
		    HTTP_REFUSED_REQUEST, e));
	if (hd.has_length && hd.length <= (uint64_t)h->conf->max_body_size)
		want = hd.length;
	if (!http_reserve(c, want))
		return (http_frame_refuse(c, 503, "unavailable",
		    HTTP_REFUSED_REQUEST, e));
	frame_body(&c->frame, &hd);
	return (0);
}

/*
 * A chunk-size line: plain hex (else 400) and room for the chunk (else
 * 503).  A body over max_body_size is left to evhttp (413).  evhttp reads
 * the refused request's body as ended, and http_route_cb answers it.
 */
static int
http_frame_chunk(struct http_conn *c, const char *text, size_t len,
    struct http_edit *e)
{
	uint64_t	size;

	if (frame_chunk(&c->frame, text, len, &size) != 0)
		return (http_frame_refuse(c, 400, "invalid_request",
		    HTTP_REFUSED_CHUNK, e));
	if (size > (uint64_t)c->http->conf->max_body_size ||
	    (c->body += size) > (uint64_t)c->http->conf->max_body_size)
		return (0);
	if (!http_reserve(c, size))
		return (http_frame_refuse(c, 503, "unavailable",
		    HTTP_REFUSED_CHUNK, e));
	return (0);
}

/*
 * Does a head that needs a token (POST to a route with one) carry it?
 * Others pass; their handlers check what they need.  *endpoint is the
 * head's route, for the refusal's metrics.
 */
static int
http_frame_token(struct http *h, const struct frame_head *hd, int *endpoint)
{
	size_t	i;

	for (i = 0; i < sizeof http_routes / sizeof http_routes[0]; i++) {
		if (strcmp(hd->path, http_routes[i].path) != 0)
			continue;
		*endpoint = http_routes[i].endpoint;
		if (http_routes[i].token < 0 || strcmp(hd->method, "POST") != 0)
			return (1);
		return (!hd->auth_long && http_token_ok(h,
		    http_routes[i].token, hd->has_auth ? hd->auth : NULL));
	}
	return (1);
}

/*
 * Refuse the request whose head was given last: from the unit on, evhttp
 * reads only tail, and nothing more from this connection.
 */
static int
http_frame_refuse(struct http_conn *c, int code, const char *error,
    const char *tail, struct http_edit *e)
{
	log_debug("refused a request before its body: %d %s", code, error);
	c->refuse_at = c->passed;
	c->refuse_code = code;
	c->refuse_error = error;
	c->refuse_endpoint = c->endpoint;
	c->discard = 1;
	frame_off(&c->frame);
	e->cut = HTTP_CUT_DROP;
	e->tail = tail;
	evbuffer_drain(c->hold, evbuffer_get_length(c->hold));
	c->holding = 0;
	return (-1);
}

/*
 * Change the input as *e says: new bytes start at e->start; a held unit
 * that passed goes back before them; from e->keep of them on, the rest is held or
 * dropped (then e->tail added).  evbuffer only removes from the front, so
 * the parts are taken out and put back in order.
 */
static void
http_frame_edit(struct http_conn *c, struct evbuffer *buf,
    const struct http_edit *e)
{
	struct evbuffer	*prefix, *kept;

	c->editing = 1;
	if ((prefix = evbuffer_new()) == NULL ||
	    (kept = evbuffer_new()) == NULL)
		fatalx("evbuffer_new");
	evbuffer_remove_buffer(buf, prefix, e->start);
	if (e->cut != HTTP_CUT_NONE) {
		evbuffer_remove_buffer(buf, kept, e->keep);
		if (e->cut == HTTP_CUT_HOLD)
			evbuffer_add_buffer(c->hold, buf);
		else
			evbuffer_drain(buf, evbuffer_get_length(buf));
		evbuffer_add_buffer(buf, kept);
		if (e->tail != NULL)
			evbuffer_add(buf, e->tail, strlen(e->tail));
	}
	if (e->insert != NULL) {
		evbuffer_prepend_buffer(buf, e->insert);
		evbuffer_free(e->insert);
	}
	evbuffer_prepend_buffer(buf, prefix);
	evbuffer_free(prefix);
	evbuffer_free(kept);
	c->editing = 0;
}

/*
 * Reserve n body bytes for the request given last on c; 0 if all bodies
 * together would pass max_body_memory (never below max_body_size).
 */
static int
http_reserve(struct http_conn *c, uint64_t n)
{
	struct http	*h = c->http;
	uint64_t	 limit = (uint64_t)h->conf->max_body_memory;

	if ((uint64_t)h->conf->max_body_size > limit)
		limit = (uint64_t)h->conf->max_body_size;
	if (n == 0)
		return (1);
	if (h->body_mem + n > limit)
		return (0);
	h->body_mem += n;
	c->res[c->nres - 1] += n;
	if (h->body_mem > h->body_peak)
		h->body_peak = h->body_mem;
	return (1);
}

/*
 * Release the reservations of c's first n requests (SIZE_MAX: all); n 0
 * adds a slot for a new request instead.
 */
static void
http_release(struct http_conn *c, size_t n)
{
	struct http	*h = c->http;
	size_t		 i;

	if (n == 0) {
		if (c->nres == c->ressize) {
			c->ressize = c->ressize == 0 ? 4 : c->ressize * 2;
			c->res = xreallocarray(c->res, c->ressize,
			    sizeof *c->res);
		}
		c->res[c->nres++] = 0;
		return;
	}
	if (n > c->nres)
		n = c->nres;
	if (n == 0)
		return;
	for (i = 0; i < n; i++)
		h->body_mem -= c->res[i];
	memmove(c->res, c->res + n, (c->nres - n) * sizeof *c->res);
	c->nres -= n;
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

/*
 * A complete request arrived on a connection: stop its clock.  Return
 * the connection, NULL if it is unknown.
 */
static struct http_conn *
http_request_started(struct http *h, struct evhttp_request *req)
{
	struct evhttp_connection	*evcon;
	struct bufferevent		*bev;
	struct http_conn		*c;

	if ((evcon = evhttp_request_get_connection(req)) == NULL)
		return (NULL);
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
		c->started++;
		http_idle_del(h, c);
		evhttp_request_set_on_complete_cb(req, http_request_done_cb, c);
		return (c);
	}
	return (NULL);
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
	http_release(c, 1);
	c->since = http_now();
	http_idle_del(c->http, c);
	http_idle_add(c->http, c);
	if (c->http->listener_off)
		http_listener_update(c->http);
}

/*
 * A connection came in over max_connections: close the one whose answer
 * has waited unread longest, if one has waited HTTP_UNREAD_GRACE, else
 * the one that has gone longest without a request being answered on it.
 * Return 1 if one is closing (its slot is free once evhttp has freed it,
 * later in this loop iteration), 0 if every connection has a request in
 * hand that is being answered or read.
 */
static int
http_make_room(struct http *h)
{
	struct http_conn	*c;
	int64_t			 now = http_now();

	if (http_unread_stale(h, now)) {
		c = TAILQ_FIRST(&h->unread);
		log_debug("%zu connections open: closing one whose answer has "
		    "waited unread for %lldms", h->nconns,
		    (long long)(now - c->unread));
	} else if ((c = TAILQ_FIRST(&h->idle)) != NULL)
		log_debug("%zu connections open: closing one idle for %llds",
		    h->nconns, (long long)(now - c->since) / 1000);
	else
		return (0);
	metrics_connection_closed();
	http_conn_close(c);
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
	http_unread_del(h, c);
	TAILQ_REMOVE(&h->conns, c, entry);
	h->nconns--;
	evbuffer_remove_cb(bufferevent_get_input(c->bev), http_input_cb, c);
	evbuffer_remove_cb(bufferevent_get_output(c->bev), http_output_cb, c);
	http_release(c, SIZE_MAX);
	free(c->res);
	evbuffer_free(c->hold);
	if (h->tls != NULL)
		tls_forget(c->bev);
	bufferevent_decref(c->bev);
	free(c);
}

/*
 * Listen while fewer than max_connections are open, or while one of them
 * could make room for a new one (http_bev_cb closes it then): one idle,
 * or one whose answer has waited unread.
 */
static void
http_listener_update(struct http *h)
{
	int	full = h->nconns >= (size_t)h->conf->max_connections &&
		    TAILQ_EMPTY(&h->idle) && !http_unread_stale(h, http_now());

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

/*
 * Once a second: cut off slow requests and answers left unread, and mind
 * the listener.
 */
static void
http_tick_cb(evutil_socket_t fd, short events, void *arg)
{
	struct http		*h = arg;
	struct http_conn	*c;
	int64_t			 now = http_now();

	(void)fd;
	(void)events;
#ifdef __GLIBC__
	/*
	 * After a burst of bodies, once none is held (nor, a tick later, the
	 * requests that held them), give free memory back to the system.
	 */
	if (h->body_mem == 0 && h->body_peak >= HTTP_TRIM_AFTER) {
		h->body_peak = 0;
		malloc_trim(0);
	}
#endif
	/* The error callback is deferred, so the list stays as it is here. */
	TAILQ_FOREACH(c, &h->conns, entry) {
		if (c->deadline == 0 || now < c->deadline)
			continue;
		log_debug("request not complete within %llds: closing",
		    h->conf->request_timeout);
		http_conn_close(c);
	}
	/* Oldest first; http_conn_close takes it off the list. */
	while ((c = TAILQ_FIRST(&h->unread)) != NULL &&
	    now - c->unread >= h->conf->request_timeout * 1000) {
		log_debug("answer not read within %llds: closing",
		    h->conf->request_timeout);
		http_conn_close(c);
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
	struct http_conn		*c;
	const struct evhttp_uri		*uri;
	const char			*path;
	size_t				 i;

	h->cur_req = req;
	h->cur_start = http_usec();
	h->cur_endpoint = METRICS_EP_OTHER;
	c = http_request_started(h, req);
	if (c != NULL && c->refuse_at != 0 && c->refuse_at == c->started) {
		h->cur_endpoint = c->refuse_endpoint;
		evhttp_add_header(evhttp_request_get_output_headers(req),
		    "Connection", "close");
		http_error(h, req, c->refuse_code, c->refuse_error);
		h->cur_req = NULL;
		return;
	}
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

/* The event loop of the server. */
struct event_base *
http_base(struct http *h)
{
	return (h->base);
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
	http_reply_type(h, req, code, "application/json", body);
}

/* http_reply with a Content-Type of its own (a string constant). */
void
http_reply_type(struct http *h, struct evhttp_request *req, int code,
    const char *ctype, const char *body)
{
	struct http_pending	*p;

	p = xcalloc(1, sizeof *p);
	p->req = req;
	p->code = code;
	p->ctype = ctype;
	p->body = xstrdup(body);
	http_started(h, req, &p->endpoint, &p->start);
	TAILQ_INSERT_TAIL(&h->pending, p, entry);
	/*
	 * Activating an event that is already active does nothing; with as
	 * many flushes in flight as the flusher takes, the next answer asks
	 * for the next.
	 */
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
 * The end of a batch: ask for a flush covering its answers, unless the
 * flusher has as many in flight as it takes (the next answer asks for
 * the next).  Without the flusher thread, flush here and answer.
 */
static void
http_flush_cb(evutil_socket_t fd, short events, void *arg)
{
	struct http		*h = arg;
	struct http_pendings	 now;
	struct http_pending	*p;
	int			 r;

	(void)fd;
	(void)events;
	if (TAILQ_EMPTY(&h->pending) ||
	    (r = store_flush_async(h->store)) == 1)
		return;
	if (r == 0) {
		h->flush_batches++;
		TAILQ_FOREACH(p, &h->pending, entry)
			p->batch = h->flush_batches;
		TAILQ_CONCAT(&h->flushing, &h->pending, entry);
		return;
	}
	TAILQ_INIT(&now);
	TAILQ_CONCAT(&now, &h->pending, entry);
	http_flushed(&now, store_flush(h->store) == STORE_OK);
}

/*
 * The flusher's answer, to the oldest flush in flight: send the answers
 * it covers, then ask again.
 */
static void
http_flushed_cb(int ok, void *arg)
{
	struct http		*h = arg;
	struct http_pendings	 done;
	struct http_pending	*p;
	uint64_t		 batch;

	TAILQ_INIT(&done);
	if ((p = TAILQ_FIRST(&h->flushing)) != NULL) {
		batch = p->batch;
		while ((p = TAILQ_FIRST(&h->flushing)) != NULL &&
		    p->batch == batch) {
			TAILQ_REMOVE(&h->flushing, p, entry);
			TAILQ_INSERT_TAIL(&done, p, entry);
		}
	}
	/*
	 * Ask for the next flush before sending these answers: the answers
	 * queued meanwhile are committed, and the disk need not wait while
	 * the loop writes a batch of answers.
	 */
	http_flush_cb(-1, 0, h);
	http_flushed(&done, ok);
	if (!TAILQ_EMPTY(&h->pending))
		event_active(h->flush_ev, EV_TIMEOUT, 0);
}

/* Send the answers of a flush that ended (503 if it failed). */
static void
http_flushed(struct http_pendings *list, int ok)
{
	struct http_pending	*p;

	if (!ok)
		log_warnx("log flush failed: answering 503");
	while ((p = TAILQ_FIRST(list)) != NULL) {
		TAILQ_REMOVE(list, p, entry);
		if (ok)
			http_send(p->req, p->code, p->ctype, p->body,
			    p->endpoint, p->start);
		else
			http_send(p->req, 503, "application/json",
			    "{\"error\":\"unavailable\"}", p->endpoint,
			    p->start);
		free(p->body);
		free(p);
	}
}
