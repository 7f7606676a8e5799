/*
 * The status socket (DESIGN section 5): a Unix stream socket on which
 * operators and phoneclaimctl send one command per line and get one line of
 * JSON back per command.  The connection stays open until the client
 * closes it.
 *
 * The socket is created only after a connect() shows that no daemon
 * listens on the path (a stale socket of a dead one is removed), with mode
 * 0660.  Every peer may read; commands that change claims need uid 0 or the
 * daemon's own uid (SO_PEERCRED, read once at accept).
 *
 * No client can stall the daemon or make it grow without bound: at most
 * CONTROL_MAX_CLIENTS connections (more are told so and closed), lines of
 * at most CONTROL_LINE_MAX bytes (a longer one closes the connection),
 * input read at most CONTROL_INPUT_HIGH bytes ahead, a client that keeps
 * more than CONTROL_OUTPUT_MAX bytes of answers unread is dropped, and one
 * that neither sends nor reads for CONTROL_IDLE_TIMEOUT seconds is closed.
 *
 * Durability (invariant I2): the answer to a command that changed claims
 * goes out only once the log is on disk.  Such an answer, and every answer
 * after it on the same connection (to keep their order), waits in the
 * client's held buffer; flush_ev, activated then, runs after the callbacks
 * of this loop iteration, flushes the log once for all clients and moves
 * the held answers to the output.  A client that pipelines many claims
 * (phoneclaimctl import) costs one flush per batch, not one per line.
 *
 * export streams every claim, one line each, then {"end":N}.  It reads
 * CONTROL_EXPORT_BATCH claims per short transaction, and only while the
 * client's output is below CONTROL_EXPORT_HIGH: the write callback asks
 * for more when the client has read it down to CONTROL_EXPORT_LOW.  So a
 * large export holds neither the store nor much memory, whatever the
 * client's speed.  Commands sent during an export wait for its end.
 *
 * backup runs on the store's backup thread (store_backup_start): the loop
 * goes on serving HTTP and other clients, and the client that asked gets
 * its answer when the backup ends; its later commands wait until then, as
 * during an export.  One backup at a time; a client that leaves before the
 * end does not stop it (the result is logged).
 */
#include "config.h"

#include <sys/types.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <yajl/yajl_gen.h>

#include "commands.h"
#include "log.h"
#include "phone.h"
#include "phoneclaimd.h"
#include "xmalloc.h"

#define CONTROL_MAX_CLIENTS	64
/*
 * Any user who may connect can only read; so that one of them cannot
 * keep root out (issue 18), the last slots are kept for root and the
 * daemon's uid, each other uid has a few, and its idle connections are
 * closed sooner.
 */
#define CONTROL_KEPT_CLIENTS	16		/* only for root and us */
#define CONTROL_MAX_PER_UID	8		/* clients of another uid */
#define CONTROL_IDLE_READER	15		/* seconds, another uid */
#define CONTROL_LINE_MAX	4096		/* bytes, without the newline */
#define CONTROL_MAX_WORDS	64
#define CONTROL_INPUT_HIGH	(16 * 1024)
#define CONTROL_OUTPUT_MAX	(1024 * 1024)
#define CONTROL_IDLE_TIMEOUT	300		/* seconds */
#define CONTROL_DRAIN_TIMEOUT	2		/* seconds, closing */
#define CONTROL_EXPORT_LOW	(64 * 1024)
#define CONTROL_EXPORT_HIGH	(256 * 1024)
#define CONTROL_EXPORT_BATCH	256		/* claims per transaction */
#define CONTROL_SOCKET_UMASK	0117		/* mode 0660 */
#define CONTROL_BACKLOG		16

/* What shows of a number: an ellipsis (U+2026) and the last digits. */
#define CONTROL_ELLIPSIS	"\xe2\x80\xa6"

#define CONTROL_TOO_MANY	"{\"error\":\"too_many_connections\"}\n"

struct control_client {
	struct control		*ctl;
	struct bufferevent	*bev;
	struct evbuffer		*held;		/* answers awaiting the flush */
	uid_t			 uid;
	pid_t			 pid;
	int			 eof;		/* the client sends no more */
	int			 closing;	/* close when all is sent */
	int			 draining;	/* output out: discard input */
	int			 exporting;
	int			 backing_up;	/* waits for the backup */
	int			 export_started;
	struct claim		 export_after;	/* the last claim sent */
	unsigned long long	 exported;
	TAILQ_ENTRY(control_client) entry;
};
TAILQ_HEAD(control_clients, control_client);

struct control {
	struct event_base	*base;
	const struct conf	*conf;
	struct store		*store;
	struct evconnlistener	*listener;
	char			*path;
	int			 bound;		/* path is our socket */
	time_t			 started;	/* monotonic seconds */
	uid_t			 uid;		/* the daemon's */
	struct event		*flush_ev;
	struct event		*resume_ev;	/* listener after EMFILE */
	struct control_clients	 clients;
	size_t			 nclients;
	int			 full;		/* refusing: logged once */
	struct claim		*batch;		/* one export piece */
	struct control_client	*backup_client;	/* NULL: gone, or none */
	char			*backup_dir;	/* of the running backup */
};

/* The handler of a command; its arguments are in commands.c's table. */
struct control_cmd {
	const char	*name;
	void		(*fn)(struct control_client *, int, char **);
};

static time_t	control_now(void);
static int	control_check_path(const char *, struct sockaddr_un *,
		    char **);
static int	control_check_live(const char *, struct sockaddr_un *,
		    char **);
static int	control_listen(struct control *, char **);
static int	control_privileged(const struct control *, uid_t);
static int	control_room(struct control *, uid_t);
static void	control_accept_cb(struct evconnlistener *, evutil_socket_t,
		    struct sockaddr *, int, void *);
static void	control_accept_error_cb(struct evconnlistener *, void *);
static void	control_resume_cb(evutil_socket_t, short, void *);
static void	control_client_free(struct control_client *);
static void	control_read_cb(struct bufferevent *, void *);
static void	control_write_cb(struct bufferevent *, void *);
static void	control_event_cb(struct bufferevent *, short, void *);
static void	control_process(struct control_client *);
static int	control_next_line(struct control_client *, char *);
static void	control_close(struct control_client *, const char *);
static void	control_maybe_done(struct control_client *);
static int	control_busy(struct control_client *);
static size_t	control_pending(struct control_client *);
static void	control_flush_cb(evutil_socket_t, short, void *);
static void	control_command(struct control_client *, char *);
static int	control_split(char *, char **, int *);
static const char *control_args(const struct command_info *, int, char **);
static int	control_number(struct control_client *, const char *,
		    char *);
static int	control_user(struct control_client *, const char *);
static const char *control_last4(const char *);
static yajl_gen	control_gen(void);
static void	control_gen_key(yajl_gen, const char *);
static void	control_gen_str(yajl_gen, const char *, const char *);
static void	control_gen_int(yajl_gen, const char *, long long);
static void	control_gen_time(yajl_gen, const char *, int64_t, int);
static void	control_gen_number(yajl_gen, const char *, const char *);
static void	control_send(struct control_client *, yajl_gen, int);
static void	control_error(struct control_client *, const char *);
static const char *control_source_name(int);
static const char *control_state_name(int);
static void	control_gen_claim(yajl_gen, const struct claim *, int);
static void	control_cmd_status(struct control_client *, int, char **);
static void	control_gen_events(yajl_gen);
static void	control_gen_repl(yajl_gen, struct store *);
static void	control_cmd_lookup(struct control_client *, int, char **);
static void	control_cmd_user(struct control_client *, int, char **);
static void	control_cmd_conflicts(struct control_client *, int, char **);
static const char *control_removal_name(int);
static void	control_gen_conflict(yajl_gen, const struct conflict *);
static void	control_cmd_release(struct control_client *, int, char **);
static void	control_cmd_claim(struct control_client *, int, char **);
static void	control_cmd_export(struct control_client *, int, char **);
static void	control_export_more(struct control_client *);
static void	control_cmd_help(struct control_client *, int, char **);
static void	control_cmd_backup(struct control_client *, int, char **);
static void	control_backup_done_cb(const struct store_backup_result *,
		    void *);
static void	control_cmd_backfill(struct control_client *, int, char **);
static void	control_gen_backfill(yajl_gen, const struct store_counts *);
static void	control_gen_reconcile(yajl_gen);
static void	control_cmd_reconcile(struct control_client *, int, char **);
static void	control_gen_bootstrap(yajl_gen);
static void	control_cmd_bootstrap(struct control_client *, int, char **);

static const struct control_cmd control_cmds[] = {
	{ "status", control_cmd_status },
	{ "lookup", control_cmd_lookup },
	{ "user", control_cmd_user },
	{ "conflicts", control_cmd_conflicts },
	{ "release", control_cmd_release },
	{ "claim", control_cmd_claim },
	{ "export", control_cmd_export },
	{ "backfill", control_cmd_backfill },
	{ "reconcile", control_cmd_reconcile },
	{ "bootstrap", control_cmd_bootstrap },
	{ "backup", control_cmd_backup },
	{ "help", control_cmd_help },
};

/* Seconds on the monotonic clock. */
static time_t
control_now(void)
{
	struct timespec	ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (ts.tv_sec);
}

/* Create the status socket and start accepting clients. */
struct control *
control_init(struct event_base *base, const struct conf *conf,
    struct store *store, char **cause)
{
	struct control	*ctl;

	*cause = NULL;
	ctl = xcalloc(1, sizeof *ctl);
	ctl->base = base;
	ctl->conf = conf;
	ctl->store = store;
	ctl->path = xstrdup(conf->status_socket);
	ctl->started = control_now();
	ctl->uid = geteuid();
	TAILQ_INIT(&ctl->clients);
	ctl->batch = xcalloc(CONTROL_EXPORT_BATCH, sizeof *ctl->batch);
	ctl->flush_ev = event_new(base, -1, 0, control_flush_cb, ctl);
	ctl->resume_ev = event_new(base, -1, 0, control_resume_cb, ctl);
	if (ctl->flush_ev == NULL || ctl->resume_ev == NULL)
		fatalx("event_new");
	if (control_listen(ctl, cause) != 0) {
		control_free(ctl);
		return (NULL);
	}
	log_info("status socket on %s", ctl->path);
	return (ctl);
}

/* Close every client and the socket, and remove it. */
void
control_free(struct control *ctl)
{
	struct control_client	*c;

	if (ctl == NULL)
		return;
	while ((c = TAILQ_FIRST(&ctl->clients)) != NULL)
		control_client_free(c);
	if (ctl->listener != NULL)
		evconnlistener_free(ctl->listener);
	if (ctl->bound && unlink(ctl->path) != 0 && errno != ENOENT)
		log_warn("unlink %s", ctl->path);
	if (ctl->flush_ev != NULL)
		event_free(ctl->flush_ev);
	if (ctl->resume_ev != NULL)
		event_free(ctl->resume_ev);
	free(ctl->batch);
	free(ctl->backup_dir);
	free(ctl->path);
	free(ctl);
}

/*
 * Check the socket path before touching it: it must fit in sun_path, its
 * directory must exist (we do not create it: that is the service
 * manager's or the administrator's job, with the right owner), and
 * whatever is there now must be a socket.
 */
static int
control_check_path(const char *path, struct sockaddr_un *sun, char **cause)
{
	struct stat	 sb;
	char		*dir, *slash;

	memset(sun, 0, sizeof *sun);
	sun->sun_family = AF_UNIX;
	if ((size_t)snprintf(sun->sun_path, sizeof sun->sun_path, "%s",
	    path) >= sizeof sun->sun_path) {
		xasprintf(cause, "status socket path %s is too long (%zu "
		    "bytes, at most %zu)", path, strlen(path),
		    sizeof sun->sun_path - 1);
		return (-1);
	}
	dir = xstrdup(path);
	if ((slash = strrchr(dir, '/')) != NULL)
		*(slash == dir ? slash + 1 : slash) = '\0';
	if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
		xasprintf(cause, "status socket %s: directory %s %s", path,
		    dir, errno == ENOENT ? "does not exist" :
		    "is not a usable directory");
		free(dir);
		return (-1);
	}
	free(dir);
	if (lstat(path, &sb) == 0 && !S_ISSOCK(sb.st_mode)) {
		xasprintf(cause, "status socket %s: the path exists and is "
		    "not a socket", path);
		return (-1);
	}
	return (0);
}

/*
 * connect() to the path: if a daemon answers, refuse to start rather than
 * steal its socket; if nothing listens there, the socket is stale (a
 * daemon that was killed): remove it.
 */
static int
control_check_live(const char *path, struct sockaddr_un *sun, char **cause)
{
	int	fd, rv, saved;

	if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
	    0)) == -1) {
		xasprintf(cause, "socket: %s", strerror(errno));
		return (-1);
	}
	rv = connect(fd, (struct sockaddr *)sun, sizeof *sun);
	saved = errno;
	close(fd);
	/* EAGAIN: its backlog is full, so it is alive. */
	if (rv == 0 || saved == EAGAIN) {
		xasprintf(cause, "status socket %s is in use by a running "
		    "phoneclaimd", path);
		return (-1);
	}
	if (saved == ENOENT)
		return (0);
	if (saved != ECONNREFUSED) {
		xasprintf(cause, "status socket %s: %s", path,
		    strerror(saved));
		return (-1);
	}
	if (unlink(path) != 0 && errno != ENOENT) {
		xasprintf(cause, "cannot remove the stale status socket %s: %s",
		    path, strerror(errno));
		return (-1);
	}
	log_info("removed the stale status socket %s", path);
	return (0);
}

/* Bind the socket with mode 0660 and listen. */
static int
control_listen(struct control *ctl, char **cause)
{
	struct sockaddr_un	sun;
	mode_t			old;
	int			fd, rv;

	if (control_check_path(ctl->path, &sun, cause) != 0 ||
	    control_check_live(ctl->path, &sun, cause) != 0)
		return (-1);
	if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
	    0)) == -1) {
		xasprintf(cause, "socket: %s", strerror(errno));
		return (-1);
	}
	old = umask(CONTROL_SOCKET_UMASK);
	rv = bind(fd, (struct sockaddr *)&sun, sizeof sun);
	umask(old);
	if (rv != 0) {
		xasprintf(cause, "cannot bind the status socket %s: %s",
		    ctl->path, strerror(errno));
		close(fd);
		return (-1);
	}
	ctl->bound = 1;
	ctl->listener = evconnlistener_new(ctl->base, control_accept_cb, ctl,
	    LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, CONTROL_BACKLOG,
	    fd);
	if (ctl->listener == NULL) {
		xasprintf(cause, "cannot listen on the status socket %s: %s",
		    ctl->path, strerror(errno));
		close(fd);
		return (-1);
	}
	evconnlistener_set_error_cb(ctl->listener, control_accept_error_cb);
	return (0);
}

/* A client connected: note who it is and start reading its commands. */
static void
control_accept_cb(struct evconnlistener *l, evutil_socket_t fd,
    struct sockaddr *sa, int salen, void *arg)
{
	struct control		*ctl = arg;
	struct control_client	*c;
	struct ucred		 cred;
	socklen_t		 len = sizeof cred;
	struct timeval		 idle = { CONTROL_IDLE_TIMEOUT, 0 };

	(void)l;
	(void)sa;
	(void)salen;
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
		log_warn("status socket: SO_PEERCRED");
		close(fd);
		return;
	}
	if (!control_room(ctl, cred.uid)) {
		/* A fresh socket's buffer takes this small write whole. */
		if (write(fd, CONTROL_TOO_MANY, strlen(CONTROL_TOO_MANY)) < 0)
			log_debug("status socket: write: %s", strerror(errno));
		close(fd);
		return;
	}
	if (!control_privileged(ctl, cred.uid))
		idle.tv_sec = CONTROL_IDLE_READER;
	c = xcalloc(1, sizeof *c);
	c->ctl = ctl;
	c->uid = cred.uid;
	c->pid = cred.pid;
	if ((c->bev = bufferevent_socket_new(ctl->base, fd,
	    BEV_OPT_CLOSE_ON_FREE)) == NULL || (c->held = evbuffer_new()) ==
	    NULL)
		fatalx("status socket: out of memory");
	bufferevent_setcb(c->bev, control_read_cb, control_write_cb,
	    control_event_cb, c);
	bufferevent_setwatermark(c->bev, EV_READ, 0, CONTROL_INPUT_HIGH);
	bufferevent_setwatermark(c->bev, EV_WRITE, CONTROL_EXPORT_LOW, 0);
	bufferevent_set_timeouts(c->bev, &idle, &idle);
	bufferevent_enable(c->bev, EV_READ | EV_WRITE);
	TAILQ_INSERT_TAIL(&ctl->clients, c, entry);
	ctl->nclients++;
	log_debug("status socket: client uid %u pid %ld connected",
	    (unsigned)c->uid, (long)c->pid);
}

/* Root and the daemon's uid may change claims; others only read. */
static int
control_privileged(const struct control *ctl, uid_t uid)
{
	return (uid == 0 || uid == ctl->uid);
}

/*
 * Is there room for one more client of uid?  Root and the daemon's uid
 * may take every slot; another uid neither the last CONTROL_KEPT_CLIENTS
 * nor more than CONTROL_MAX_PER_UID.  Refusals are logged once until a
 * client gets in again.
 */
static int
control_room(struct control *ctl, uid_t uid)
{
	struct control_client	*c;
	size_t			 mine = 0;

	if (control_privileged(ctl, uid)) {
		if (ctl->nclients < CONTROL_MAX_CLIENTS) {
			ctl->full = 0;
			return (1);
		}
		if (!ctl->full)
			log_warnx("status socket: %d clients connected: "
			    "refusing more", CONTROL_MAX_CLIENTS);
		ctl->full = 1;
		return (0);
	}
	TAILQ_FOREACH(c, &ctl->clients, entry) {
		if (c->uid == uid)
			mine++;
	}
	if (ctl->nclients < CONTROL_MAX_CLIENTS - CONTROL_KEPT_CLIENTS &&
	    mine < CONTROL_MAX_PER_UID)
		return (1);
	log_debug("status socket: uid %u has %zu client(s), %zu in all: "
	    "refusing another", (unsigned)uid, mine, ctl->nclients);
	return (0);
}

/*
 * accept() failed for want of descriptors or memory: pause the listener
 * for a second rather than spin on a socket that stays readable.
 */
static void
control_accept_error_cb(struct evconnlistener *l, void *arg)
{
	struct control	*ctl = arg;
	struct timeval	 tv = { 1, 0 };

	log_warn("status socket: accept");
	evconnlistener_disable(l);
	evtimer_add(ctl->resume_ev, &tv);
}

/* Accept again after a pause. */
static void
control_resume_cb(evutil_socket_t fd, short events, void *arg)
{
	struct control	*ctl = arg;

	(void)fd;
	(void)events;
	evconnlistener_enable(ctl->listener);
}

/* Forget a client and close its connection. */
static void
control_client_free(struct control_client *c)
{
	struct control	*ctl = c->ctl;

	TAILQ_REMOVE(&ctl->clients, c, entry);
	ctl->nclients--;
	if (ctl->backup_client == c)
		ctl->backup_client = NULL;
	bufferevent_free(c->bev);
	evbuffer_free(c->held);
	log_debug("status socket: client uid %u pid %ld gone",
	    (unsigned)c->uid, (long)c->pid);
	free(c);
}

/* Commands arrived. */
static void
control_read_cb(struct bufferevent *bev, void *arg)
{
	struct control_client	*c = arg;

	if (c->draining) {
		evbuffer_drain(bufferevent_get_input(bev),
		    evbuffer_get_length(bufferevent_get_input(bev)));
		return;
	}
	control_process(c);
}

/* The client read its output down to the low mark (or empty). */
static void
control_write_cb(struct bufferevent *bev, void *arg)
{
	struct control_client	*c = arg;

	(void)bev;
	if (!c->draining)
		control_process(c);
}

/*
 * End of input, an error or a timeout.  Reading times out after
 * CONTROL_IDLE_TIMEOUT without a byte in, but a client that is still
 * being answered (a long export) is not idle; writing times out when the
 * client has not read anything for as long.
 */
static void
control_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct control_client	*c = arg;

	if (c->draining || (what & BEV_EVENT_ERROR)) {
		control_client_free(c);
		return;
	}
	if (what & BEV_EVENT_EOF) {
		c->eof = 1;
		control_process(c);
		return;
	}
	if ((what & BEV_EVENT_READING) && control_busy(c)) {
		bufferevent_enable(bev, EV_READ);
		return;
	}
	log_debug("status socket: client uid %u pid %ld %s for %ds: closing",
	    (unsigned)c->uid, (long)c->pid, (what & BEV_EVENT_READING) ?
	    "idle" : "not reading", control_privileged(c->ctl, c->uid) ?
	    CONTROL_IDLE_TIMEOUT : CONTROL_IDLE_READER);
	control_client_free(c);
}

/* Return 1 while a client still has answers coming or going out. */
static int
control_busy(struct control_client *c)
{
	return (c->exporting || c->backing_up || control_pending(c) > 0);
}

/* Bytes of answers not yet handed to the kernel. */
static size_t
control_pending(struct control_client *c)
{
	return (evbuffer_get_length(bufferevent_get_output(c->bev)) +
	    evbuffer_get_length(c->held));
}

/*
 * Run the client's complete lines in order, as far as it can go now: an
 * export in progress and a closing connection stop it; the write callback
 * and the flush run it again.  A client whose unread answers pile up past
 * CONTROL_OUTPUT_MAX is dropped here.
 */
static void
control_process(struct control_client *c)
{
	char	line[CONTROL_LINE_MAX + 1];
	int	r;

	while (!c->closing) {
		if (control_pending(c) > CONTROL_OUTPUT_MAX) {
			log_warnx("status socket: client uid %u pid %ld does "
			    "not read its answers: dropping it",
			    (unsigned)c->uid, (long)c->pid);
			control_client_free(c);
			return;
		}
		if (c->backing_up)
			return;
		if (c->exporting) {
			control_export_more(c);
			if (c->exporting)
				return;
			continue;
		}
		if ((r = control_next_line(c, line)) == 0)
			break;
		if (r == -1)
			control_close(c, "line_too_long");
		else
			control_command(c, line);
	}
	control_maybe_done(c);
}

/*
 * Take the next line of input into line: 1, or 0 if there is no complete
 * line yet, or -1 if it is longer than CONTROL_LINE_MAX.  After the end of
 * input, what remains is the last line even without its newline.
 */
static int
control_next_line(struct control_client *c, char *line)
{
	struct evbuffer		*in = bufferevent_get_input(c->bev);
	struct evbuffer_ptr	 p;
	size_t			 eol = 0, len;

	p = evbuffer_search_eol(in, NULL, &eol, EVBUFFER_EOL_LF);
	if (p.pos == -1) {
		len = evbuffer_get_length(in);
		if (len > CONTROL_LINE_MAX)
			return (-1);
		if (!c->eof || len == 0)
			return (0);
	} else
		len = (size_t)p.pos;
	if (len > CONTROL_LINE_MAX)
		return (-1);
	evbuffer_remove(in, line, len);
	evbuffer_drain(in, eol);
	line[len] = '\0';
	/* A NUL would cut the line short: make it unparseable instead. */
	if (strlen(line) != len)
		line[0] = '\001';
	return (1);
}

/* Answer a last error and close once it is out; ignore further input. */
static void
control_close(struct control_client *c, const char *error)
{
	struct evbuffer	*in = bufferevent_get_input(c->bev);

	control_error(c, error);
	c->closing = 1;
	c->exporting = 0;
	evbuffer_drain(in, evbuffer_get_length(in));
}

/*
 * Close a client that is done: closing or at the end of its input, with
 * nothing left to send.  Its remaining input is read and dropped for a
 * moment after our side is shut, so that closing with unread bytes does
 * not reset the connection before it has read the last answer.
 */
static void
control_maybe_done(struct control_client *c)
{
	struct timeval	tv = { CONTROL_DRAIN_TIMEOUT, 0 };

	if ((!c->closing && !c->eof) || control_busy(c))
		return;
	if (c->eof) {
		control_client_free(c);
		return;
	}
	c->draining = 1;
	shutdown(bufferevent_getfd(c->bev), SHUT_WR);
	evbuffer_drain(bufferevent_get_input(c->bev),
	    evbuffer_get_length(bufferevent_get_input(c->bev)));
	bufferevent_set_timeouts(c->bev, &tv, NULL);
	bufferevent_setwatermark(c->bev, EV_READ, 0, 0);
	bufferevent_disable(c->bev, EV_WRITE);
	bufferevent_enable(c->bev, EV_READ);
}

/* The log is on disk (or the store failed): release the held answers. */
static void
control_flush_cb(evutil_socket_t fd, short events, void *arg)
{
	struct control		*ctl = arg;
	struct control_client	*c, *next;
	int			 ok;

	(void)fd;
	(void)events;
	ok = store_flush(ctl->store) == STORE_OK;
	if (!ok)
		log_warnx("status socket: log flush failed");
	for (c = TAILQ_FIRST(&ctl->clients); c != NULL; c = next) {
		next = TAILQ_NEXT(c, entry);
		if (evbuffer_get_length(c->held) == 0)
			continue;
		if (ok)
			bufferevent_write_buffer(c->bev, c->held);
		else {
			evbuffer_drain(c->held, evbuffer_get_length(c->held));
			control_close(c, "unavailable");
		}
		control_process(c);
	}
}

/* Run one command line. */
static void
control_command(struct control_client *c, char *line)
{
	const struct command_info	*info;
	const struct control_cmd	*cmd = NULL;
	const char			*error;
	char				*argv[CONTROL_MAX_WORDS];
	size_t				 i;
	int				 argc;

	if (control_split(line, argv, &argc) != 0) {
		control_error(c, "invalid_argument");
		return;
	}
	if (argc == 0)
		return;		/* a blank line is no command */
	for (i = 0; i < sizeof control_cmds / sizeof control_cmds[0]; i++) {
		if (strcmp(argv[0], control_cmds[i].name) == 0)
			cmd = &control_cmds[i];
	}
	if (cmd == NULL || (info = command_find(cmd->name)) == NULL) {
		control_error(c, "unknown_command");
		return;
	}
	if (info->admin && !control_privileged(c->ctl, c->uid)) {
		log_info("status socket: uid %u pid %ld may not %s",
		    (unsigned)c->uid, (long)c->pid, cmd->name);
		control_error(c, "forbidden");
		return;
	}
	/* Only the master writes; a backup only reads. */
	if (info->admin && cmd->fn != control_cmd_backup && !repl_writable()) {
		control_error(c, "not_master");
		return;
	}
	if ((error = control_args(info, argc - 1, argv + 1)) != NULL) {
		control_error(c, error);
		return;
	}
	cmd->fn(c, argc - 1 < info->max_args ? argc - 1 : info->max_args,
	    argv + 1);
}

/*
 * Split a line into words in place: blanks separate words, and a word in
 * double quotes may hold blanks, with \" and \\ inside.  -1 if a quote is
 * not closed, a control character appears, or there are too many words.
 */
static int
control_split(char *line, char **argv, int *argc)
{
	char	*p = line, *out;
	int	 quoted;

	*argc = 0;
	for (;;) {
		while (*p == ' ' || *p == '\t' || *p == '\r')
			p++;
		if (*p == '\0')
			return (0);
		if (*argc == CONTROL_MAX_WORDS)
			return (-1);
		argv[(*argc)++] = out = p;
		for (quoted = 0; *p != '\0'; p++) {
			if (*p == '"') {
				quoted = !quoted;
				continue;
			}
			if (!quoted && (*p == ' ' || *p == '\t' || *p == '\r'))
				break;
			if (quoted && *p == '\\' && (p[1] == '"' ||
			    p[1] == '\\'))
				p++;
			if ((unsigned char)*p < 0x20 || *p == 0x7f)
				return (-1);
			*out++ = *p;
		}
		if (quoted)
			return (-1);
		if (*p != '\0')
			p++;
		*out = '\0';
	}
}

/*
 * Check a command's argument count; when the last argument takes the rest
 * of the line, join those words with single spaces (a number written with
 * spaces, a user id with a space, unquoted).  An error code, or NULL.
 */
static const char *
control_args(const struct command_info *cmd, int argc, char **argv)
{
	const char	*error;
	char		*last;
	int		 i;

	if ((error = command_check_args(cmd, argc)) != NULL ||
	    argc <= cmd->max_args)
		return (error);
	/* The words are in order in the line: pull each one back. */
	last = argv[cmd->max_args - 1];
	for (i = cmd->max_args; i < argc; i++) {
		last += strlen(last);
		*last++ = ' ';
		memmove(last, argv[i], strlen(argv[i]) + 1);
	}
	return (NULL);
}

/* Normalise a number argument into e164, or answer that it is invalid. */
static int
control_number(struct control_client *c, const char *arg, char *e164)
{
	const char	*region = c->ctl->conf->default_region;
	yajl_gen	 g;

	if (phone_normalise(arg, strlen(arg), region, e164) == 0)
		return (0);
	g = control_gen();
	control_gen_str(g, "error", "invalid_phone_number");
	/* The likeliest mistake gets its own words. */
	if (arg[strspn(arg, " \t")] != '+' &&
	    (region == NULL || *region == '\0'))
		control_gen_str(g, "detail", "the number has no leading + "
		    "and no default_region is set");
	control_send(c, g, 0);
	return (-1);
}

/* The last digits of an E.164 number, all that may be shown of it. */
static const char *
control_last4(const char *e164)
{
	size_t	len = strlen(e164);

	return (len > LAST4_LEN + 1 ? e164 + len - LAST4_LEN : e164 + 1);
}

/* Check a user id argument, or answer that it is invalid. */
static int
control_user(struct control_client *c, const char *arg)
{
	if (!claims_user_id_ok(arg)) {
		control_error(c, "invalid_user_id");
		return (-1);
	}
	return (0);
}

/* Start an answer: a generator with the object opened. */
static yajl_gen
control_gen(void)
{
	yajl_gen	g;

	if ((g = yajl_gen_alloc(NULL)) == NULL)
		fatalx("yajl_gen_alloc");
	yajl_gen_map_open(g);
	return (g);
}

/* Write an object key. */
static void
control_gen_key(yajl_gen g, const char *key)
{
	yajl_gen_string(g, (const unsigned char *)key, strlen(key));
}

/* Write a string member (null for NULL). */
static void
control_gen_str(yajl_gen g, const char *key, const char *value)
{
	if (key != NULL)
		control_gen_key(g, key);
	if (value == NULL)
		yajl_gen_null(g);
	else
		yajl_gen_string(g, (const unsigned char *)value,
		    strlen(value));
}

/* Write an integer member. */
static void
control_gen_int(yajl_gen g, const char *key, long long value)
{
	control_gen_key(g, key);
	yajl_gen_integer(g, value);
}

/*
 * Write a time as ISO 8601 UTC: t in seconds, or in milliseconds with ms
 * (and then with a fraction).  Zero or less is null: no time.
 */
static void
control_gen_time(yajl_gen g, const char *key, int64_t t, int ms)
{
	struct tm	tm;
	time_t		secs = ms ? t / 1000 : t;
	char		buf[48];
	size_t		len;

	if (t <= 0 || gmtime_r(&secs, &tm) == NULL) {
		control_gen_str(g, key, NULL);
		return;
	}
	len = strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
	if (ms)
		snprintf(buf + len, sizeof buf - len, ".%03dZ",
		    (int)(t % 1000));
	else
		snprintf(buf + len, sizeof buf - len, "Z");
	control_gen_str(g, key, buf);
}

/* Write a number as the answers show it: an ellipsis and its last digits. */
static void
control_gen_number(yajl_gen g, const char *key, const char *last4)
{
	char	buf[sizeof CONTROL_ELLIPSIS + LAST4_LEN];

	snprintf(buf, sizeof buf, "%s%.*s", CONTROL_ELLIPSIS, LAST4_LEN,
	    last4);
	control_gen_str(g, key, buf);
}

/*
 * Close the answer's object and queue it as one line: held until the next
 * flush if hold is set or earlier answers are held, else to the output.
 */
static void
control_send(struct control_client *c, yajl_gen g, int hold)
{
	const unsigned char	*buf;
	size_t			 len;
	struct evbuffer		*out;

	yajl_gen_map_close(g);
	if (yajl_gen_get_buf(g, &buf, &len) != yajl_gen_status_ok)
		fatalx("status socket: cannot generate an answer");
	if (hold || evbuffer_get_length(c->held) > 0) {
		out = c->held;
		event_active(c->ctl->flush_ev, EV_TIMEOUT, 0);
	} else
		out = bufferevent_get_output(c->bev);
	evbuffer_add(out, buf, len);
	evbuffer_add(out, "\n", 1);
	yajl_gen_free(g);
}

/* Answer {"error": code}. */
static void
control_error(struct control_client *c, const char *code)
{
	yajl_gen	g = control_gen();

	control_gen_str(g, "error", code);
	control_send(c, g, 0);
}

/* The name of a claim's source. */
static const char *
control_source_name(int source)
{
	switch (source) {
	case CLAIM_SRC_ENROLLMENT:
		return ("enrollment");
	case CLAIM_SRC_CHALLENGE:
		return ("challenge");
	case CLAIM_SRC_ADMIN:
		return ("admin");
	case CLAIM_SRC_IMPORT:
		return ("import");
	case CLAIM_SRC_LOGSTREAM:
		return ("logstream");
	case CLAIM_SRC_VERIFY:
		return ("verify");
	case CLAIM_SRC_CONFLICT:
		return ("conflict");
	case CLAIM_SRC_BOOTSTRAP:
		return ("bootstrap");
	}
	return ("unknown");
}

/* The name of a claim's state. */
static const char *
control_state_name(int state)
{
	return (state == CLAIM_PENDING ? "pending" : "active");
}

/*
 * Write one claim as an object: for a lookup by number (which names the
 * user), or by user or for export (which names the number).
 */
static void
control_gen_claim(yajl_gen g, const struct claim *cl, int by_number)
{
	yajl_gen_map_open(g);
	if (by_number)
		control_gen_str(g, "user_id", cl->user_id);
	else
		control_gen_number(g, "number", cl->last4);
	control_gen_str(g, "state", control_state_name(cl->state));
	control_gen_time(g, "since", cl->since_ms / 1000, 0);
	if (by_number)
		control_gen_time(g, "expires", cl->state == CLAIM_PENDING ?
		    cl->expires : 0, 0);
	control_gen_str(g, "source", control_source_name(cl->source));
	yajl_gen_map_close(g);
}

/* status: the daemon, its claims, the log stream and the store. */
static void
control_cmd_status(struct control_client *c, int argc, char **argv)
{
	struct control		*ctl = c->ctl;
	struct store_counts	 counts;
	yajl_gen		 g = control_gen();
	int			 ok;

	(void)argc;
	(void)argv;
	ok = store_count(ctl->store, &counts) == STORE_OK;
	control_gen_str(g, "version", PACKAGE_VERSION);
	control_gen_int(g, "uptime_s", (long long)(control_now() -
	    ctl->started));
	control_gen_str(g, "mode", conf_mode_name(ctl->conf->mode));
	control_gen_key(g, "claims");
	yajl_gen_map_open(g);
	control_gen_int(g, "active", (long long)counts.active);
	control_gen_int(g, "pending", (long long)counts.pending);
	yajl_gen_map_close(g);
	control_gen_int(g, "conflicts", (long long)counts.conflicts);
	control_gen_int(g, "conflicts_resolved",
	    (long long)claims_resolved_total());
	control_gen_events(g);
	control_gen_backfill(g, &counts);
	control_gen_key(g, "store");
	yajl_gen_map_open(g);
	control_gen_str(g, "state_dir", ctl->conf->state_dir);
	control_gen_key(g, "ok");
	yajl_gen_bool(g, ok);
	control_gen_int(g, "claims", (long long)counts.claims);
	yajl_gen_map_close(g);
	control_gen_repl(g, ctl->store);
	control_send(c, g, 0);
}

/*
 * The replication member of status (DESIGN section 5), if in a group.
 * Ready: the store is open for the role (its opening runs off the loop).
 */
static void
control_gen_repl(yajl_gen g, struct store *store)
{
	struct repl_info	ri;
	char			lsn[32];
	size_t			i;

	repl_info(&ri);
	if (!ri.enabled)
		return;
	control_gen_key(g, "replication");
	yajl_gen_map_open(g);
	control_gen_str(g, "role", repl_role_name(ri.role));
	control_gen_str(g, "master", ri.master[0] != '\0' ? ri.master : NULL);
	control_gen_key(g, "ready");
	yajl_gen_bool(g, ri.ready && store_ready(store));
	control_gen_key(g, "peers");
	yajl_gen_array_open(g);
	for (i = 0; i < ri.npeers; i++) {
		yajl_gen_map_open(g);
		control_gen_str(g, "address", ri.peers[i].repl);
		control_gen_str(g, "api", ri.peers[i].api);
		control_gen_key(g, "connected");
		yajl_gen_bool(g, ri.peers[i].connected);
		control_gen_key(g, "clock_skew_ms");
		if (ri.peers[i].skew_known)
			yajl_gen_integer(g, ri.peers[i].skew);
		else
			yajl_gen_null(g);
		yajl_gen_map_close(g);
	}
	yajl_gen_array_close(g);
	control_gen_int(g, "lag", (long long)ri.lag);
	snprintf(lsn, sizeof lsn, "%u/%u", ri.lsn_file, ri.lsn_offset);
	control_gen_str(g, "lsn", lsn);
	control_gen_int(g, "perm_failed", (long long)ri.perm_failed);
	control_gen_int(g, "ack_waits", (long long)ri.ack_waits);
	control_gen_int(g, "forwarded", (long long)ri.forwarded);
	control_gen_str(g, "clock", repl_clock_name(ri.clock));
	control_gen_key(g, "clock_skew_ms");
	if (ri.skew_known)
		yajl_gen_integer(g, ri.skew);
	else
		yajl_gen_null(g);
	yajl_gen_map_close(g);
}

/*
 * The events and last_event members of status: each event counted under
 * one outcome, as /metrics counts them (metrics_ignored_other).
 */
static void
control_gen_events(yajl_gen g)
{
	const struct metrics_events	*ev = metrics_events_totals();

	control_gen_key(g, "events");
	yajl_gen_map_open(g);
	control_gen_int(g, "applied", (long long)ev->applied);
	control_gen_int(g, "duplicates", (long long)ev->duplicates);
	control_gen_int(g, "ignored", (long long)metrics_ignored_other(ev));
	control_gen_int(g, "rejected", (long long)ev->rejected);
	control_gen_int(g, "unmatched", (long long)ev->unmatched);
	control_gen_int(g, "ambiguous", (long long)ev->ambiguous);
	control_gen_int(g, "stale", (long long)ev->stale);
	control_gen_int(g, "unreadable", (long long)events_unreadable_total());
	yajl_gen_map_close(g);
	control_gen_key(g, "last_event");
	yajl_gen_map_open(g);
	control_gen_str(g, "log_id", ev->last_log_id[0] != '\0' ?
	    ev->last_log_id : NULL);
	control_gen_time(g, "date", ev->last_date_ms, 1);
	yajl_gen_map_close(g);
}

/* lookup <number>: who holds it (the number shows only its last digits). */
static void
control_cmd_lookup(struct control_client *c, int argc, char **argv)
{
	char		 e164[PHONE_E164_SIZE];
	struct claim	*v;
	size_t		 n, i;
	yajl_gen	 g;

	(void)argc;
	if (control_number(c, argv[0], e164) != 0)
		return;
	if (claims_lookup(e164, NULL, &v, &n) != STORE_OK) {
		control_error(c, "unavailable");
		return;
	}
	g = control_gen();
	control_gen_number(g, "number", control_last4(e164));
	control_gen_key(g, "claims");
	yajl_gen_array_open(g);
	for (i = 0; i < n; i++)
		control_gen_claim(g, &v[i], 1);
	yajl_gen_array_close(g);
	free(v);
	control_send(c, g, 0);
}

/* user <user_id>: the numbers a user holds. */
static void
control_cmd_user(struct control_client *c, int argc, char **argv)
{
	struct claim	*v;
	size_t		 n, i;
	yajl_gen	 g;

	(void)argc;
	if (control_user(c, argv[0]) != 0)
		return;
	if (claims_lookup(NULL, argv[0], &v, &n) != STORE_OK) {
		control_error(c, "unavailable");
		return;
	}
	g = control_gen();
	control_gen_str(g, "user_id", argv[0]);
	control_gen_key(g, "claims");
	yajl_gen_array_open(g);
	for (i = 0; i < n; i++)
		control_gen_claim(g, &v[i], 0);
	yajl_gen_array_close(g);
	free(v);
	control_send(c, g, 0);
}

/* Write one conflict: the user who conflicted first, then the holders. */
static void
control_gen_conflict(yajl_gen g, const struct conflict *cf)
{
	size_t	i;

	yajl_gen_map_open(g);
	control_gen_number(g, "number", cf->last4);
	control_gen_key(g, "user_ids");
	yajl_gen_array_open(g);
	control_gen_str(g, NULL, cf->user_id);
	for (i = 0; i < cf->nholders; i++)
		control_gen_str(g, NULL, cf->holders[i]);
	yajl_gen_array_close(g);
	control_gen_time(g, "since", cf->since, 0);
	control_gen_str(g, "log_id", cf->log_id[0] != '\0' ? cf->log_id :
	    NULL);
	if (cf->removal != CONFLICT_RM_NONE) {
		control_gen_key(g, "removal");
		yajl_gen_map_open(g);
		control_gen_str(g, "state", control_removal_name(cf->removal));
		control_gen_str(g, "method", cf->method);
		control_gen_time(g, "at", cf->removal_at, 0);
		if (cf->removal_code != 0)
			control_gen_int(g, "http_status", cf->removal_code);
		yajl_gen_map_close(g);
	}
	/* Its user became the holder when the holders left. */
	if (cf->resolved != 0)
		control_gen_time(g, "resolved", cf->resolved, 0);
	yajl_gen_map_close(g);
}

/* The name of what became of a conflicting phone method. */
static const char *
control_removal_name(int removal)
{
	switch (removal) {
	case CONFLICT_RM_PENDING:
		return ("pending");
	case CONFLICT_RM_DONE:
		return ("removed");
	case CONFLICT_RM_ABSENT:
		return ("absent");
	case CONFLICT_RM_FAILED:
		return ("failed");
	}
	return ("none");
}

/* conflicts: every recorded conflict. */
static void
control_cmd_conflicts(struct control_client *c, int argc, char **argv)
{
	struct conflict	*v;
	size_t		 n, i;
	yajl_gen	 g;

	(void)argc;
	(void)argv;
	if (claims_conflicts(&v, &n) != STORE_OK) {
		control_error(c, "unavailable");
		return;
	}
	g = control_gen();
	control_gen_key(g, "conflicts");
	yajl_gen_array_open(g);
	for (i = 0; i < n; i++)
		control_gen_conflict(g, &v[i]);
	yajl_gen_array_close(g);
	store_conflicts_free(v, n);
	control_send(c, g, 0);
}

/* release <number> [<user_id>]: free a number, of one user or of all. */
static void
control_cmd_release(struct control_client *c, int argc, char **argv)
{
	char		 e164[PHONE_E164_SIZE], safe[DEADLETTER_LOG_SIZE];
	const char	*user = argc > 1 ? argv[1] : NULL;
	size_t		 n;
	yajl_gen	 g;

	if (control_number(c, argv[0], e164) != 0 ||
	    (user != NULL && control_user(c, user) != 0))
		return;
	if (claims_admin_release(e164, user, &n) != STORE_OK) {
		control_error(c, "unavailable");
		return;
	}
	if (user != NULL)
		log_info("status socket: uid %u released %zu claim(s) of user "
		    "%s on the number ending %s", (unsigned)c->uid, n,
		    deadletter_log_value(user, safe),
		    control_last4(e164));
	else
		log_info("status socket: uid %u released %zu claim(s) on the "
		    "number ending %s", (unsigned)c->uid, n,
		    control_last4(e164));
	g = control_gen();
	control_gen_int(g, "released", (long long)n);
	control_send(c, g, 1);
}

/* claim <number> <user_id>: assign a number to a user. */
static void
control_cmd_claim(struct control_client *c, int argc, char **argv)
{
	char		 e164[PHONE_E164_SIZE], safe[DEADLETTER_LOG_SIZE];
	int		 result;
	yajl_gen	 g;

	(void)argc;
	if (control_number(c, argv[0], e164) != 0 ||
	    control_user(c, argv[1]) != 0)
		return;
	if (claims_admin_claim(e164, argv[1], &result) != STORE_OK) {
		control_error(c, "unavailable");
		return;
	}
	log_info("status socket: uid %u assigned the number ending %s to "
	    "user %s: %s", (unsigned)c->uid, control_last4(e164),
	    deadletter_log_value(argv[1], safe),
	    claims_result_name(result));
	g = control_gen();
	control_gen_str(g, "result", claims_result_name(result));
	control_send(c, g, 1);
}

/* export: stream every claim, one line each, then {"end":N}. */
static void
control_cmd_export(struct control_client *c, int argc, char **argv)
{
	(void)argc;
	(void)argv;
	c->exporting = 1;
	c->export_started = 0;
	c->exported = 0;
	log_info("status socket: uid %u pid %ld exports the claims",
	    (unsigned)c->uid, (long)c->pid);
}

/* Send export lines until the output is full enough or the walk ends. */
static void
control_export_more(struct control_client *c)
{
	struct control	*ctl = c->ctl;
	size_t		 n, i;
	yajl_gen	 g;

	while (c->exporting && control_pending(c) < CONTROL_EXPORT_HIGH) {
		if (claims_walk(c->export_started ? &c->export_after : NULL,
		    CONTROL_EXPORT_BATCH, ctl->batch, &n) != STORE_OK) {
			c->exporting = 0;
			control_error(c, "unavailable");
			return;
		}
		for (i = 0; i < n; i++) {
			g = control_gen();
			control_gen_str(g, "user_id", ctl->batch[i].user_id);
			control_gen_number(g, "number", ctl->batch[i].last4);
			control_gen_str(g, "state",
			    control_state_name(ctl->batch[i].state));
			control_gen_time(g, "since",
			    ctl->batch[i].since_ms / 1000, 0);
			control_gen_str(g, "source",
			    control_source_name(ctl->batch[i].source));
			control_send(c, g, 0);
		}
		c->exported += n;
		if (n > 0) {
			c->export_after = ctl->batch[n - 1];
			c->export_started = 1;
		}
		if (n < CONTROL_EXPORT_BATCH) {
			c->exporting = 0;
			g = control_gen();
			control_gen_int(g, "end", (long long)c->exported);
			control_send(c, g, 0);
		}
	}
}

/* help: the command list. */
static void
control_cmd_help(struct control_client *c, int argc, char **argv)
{
	yajl_gen	g = control_gen();
	size_t		i;

	(void)argc;
	(void)argv;
	control_gen_key(g, "commands");
	yajl_gen_array_open(g);
	for (i = 0; i < command_count; i++) {
		const struct command_info	*info = &command_table[i];

		if (info->where != COMMAND_SOCKET)
			continue;
		yajl_gen_map_open(g);
		control_gen_str(g, "name", info->name);
		control_gen_str(g, "args", info->args);
		control_gen_str(g, "summary", info->summary);
		control_gen_key(g, "admin");
		yajl_gen_bool(g, info->admin);
		yajl_gen_map_close(g);
	}
	yajl_gen_array_close(g);
	control_send(c, g, 0);
}

/*
 * The "backfill" object of status and, with a Management API client, the
 * "verify" and "removals" objects.
 */
static void
control_gen_backfill(yajl_gen g, const struct store_counts *counts)
{
	const struct mgmt_status	*st = mgmt_status();

	control_gen_key(g, "backfill");
	yajl_gen_map_open(g);
	control_gen_str(g, "state", mgmt_state_name(st->state));
	control_gen_time(g, "last_run", st->last_run, 0);
	control_gen_str(g, "last_error", st->last_error[0] != '\0' ?
	    st->last_error : NULL);
	control_gen_int(g, "pages", (long long)st->pages);
	control_gen_int(g, "events", (long long)st->events);
	control_gen_int(g, "runs", (long long)st->runs);
	control_gen_int(g, "failures", (long long)st->failures);
	yajl_gen_map_close(g);
	if (st->state == MGMT_DISABLED)
		return;
	control_gen_key(g, "verify");
	yajl_gen_map_open(g);
	control_gen_int(g, "waiting", (long long)counts->verify);
	control_gen_int(g, "done", (long long)st->v_done);
	control_gen_int(g, "activated", (long long)st->v_activated);
	control_gen_int(g, "claimed", (long long)st->v_claimed);
	control_gen_int(g, "released", (long long)st->v_released);
	control_gen_int(g, "unsettled", (long long)st->v_unsettled);
	control_gen_int(g, "dropped", (long long)st->v_dropped);
	control_gen_int(g, "refused", (long long)verify_refused_total());
	control_gen_int(g, "failures", (long long)st->v_failures);
	control_gen_int(g, "gave_up", (long long)st->v_gave_up);
	control_gen_str(g, "last_error", st->v_last_error[0] != '\0' ?
	    st->v_last_error : NULL);
	yajl_gen_map_close(g);
	control_gen_key(g, "removals");
	yajl_gen_map_open(g);
	control_gen_int(g, "removed", (long long)st->rm_done);
	control_gen_int(g, "absent", (long long)st->rm_absent);
	control_gen_int(g, "refused", (long long)st->rm_refused);
	control_gen_int(g, "failures", (long long)st->rm_failures);
	control_gen_str(g, "last_error", st->rm_last_error[0] != '\0' ?
	    st->rm_last_error : NULL);
	yajl_gen_map_close(g);
	control_gen_reconcile(g);
	control_gen_bootstrap(g);
}

/* The "bootstrap" object of status (with a Management API client). */
static void
control_gen_bootstrap(yajl_gen g)
{
	const struct bootstrap_status	*b = bootstrap_status();

	if (!b->configured)
		return;
	control_gen_key(g, "bootstrap");
	yajl_gen_map_open(g);
	control_gen_str(g, "state", b->state);
	control_gen_str(g, "phase", b->phase);
	control_gen_str(g, "via", b->via);
	control_gen_time(g, "started", b->started, 0);
	control_gen_time(g, "finished", b->finished, 0);
	control_gen_int(g, "users", (long long)b->total);
	control_gen_int(g, "checked", (long long)b->checked);
	control_gen_int(g, "claimed", (long long)b->claimed);
	control_gen_int(g, "conflicts", (long long)b->conflicts);
	control_gen_int(g, "known", (long long)b->known);
	control_gen_int(g, "masked", (long long)b->masked);
	control_gen_int(g, "missing", (long long)b->missing);
	control_gen_int(g, "refused", (long long)b->refused);
	control_gen_int(g, "failures", (long long)b->failures);
	control_gen_str(g, "last_error", b->last_error[0] != '\0' ?
	    b->last_error : NULL);
	yajl_gen_map_close(g);
}

/* bootstrap: learn every phone factor of the tenant now. */
static void
control_cmd_bootstrap(struct control_client *c, int argc, char **argv)
{
	yajl_gen	g;
	int		rv;

	(void)argc;
	(void)argv;
	if (!bootstrap_status()->configured) {
		control_error(c, "not_configured");
		return;
	}
	if ((rv = bootstrap_start()) < 0) {
		control_error(c, "unavailable");
		return;
	}
	if (rv == 0)
		log_info("status socket: uid %u started a bootstrap",
		    (unsigned)c->uid);
	mgmt_wake();
	g = control_gen();
	control_gen_str(g, "bootstrap", rv == 0 ? "started" : "running");
	control_send(c, g, 1);
}

/* The "reconcile" object of status (with a Management API client). */
static void
control_gen_reconcile(yajl_gen g)
{
	const struct reconcile_status	*r = reconcile_status();

	if (!r->configured)
		return;
	control_gen_key(g, "reconcile");
	yajl_gen_map_open(g);
	control_gen_str(g, "state", !r->enabled ? "off" : r->running ?
	    "running" : "idle");
	control_gen_int(g, "interval", r->interval);
	control_gen_int(g, "share", r->share);
	control_gen_time(g, "pass_started", r->pass_started, 0);
	control_gen_int(g, "pass_checked", (long long)r->pass_checked);
	control_gen_int(g, "pass_total", (long long)r->pass_total);
	control_gen_time(g, "last_pass", r->last_pass, 0);
	control_gen_int(g, "queued", (long long)r->queued);
	control_gen_int(g, "passes", (long long)r->passes);
	control_gen_int(g, "checked", (long long)r->checked);
	control_gen_int(g, "released", (long long)r->released);
	control_gen_int(g, "learned", (long long)r->learned);
	control_gen_int(g, "conflicts", (long long)r->conflicts);
	control_gen_int(g, "unsettled", (long long)r->unsettled);
	control_gen_int(g, "missing", (long long)r->missing);
	control_gen_int(g, "failures", (long long)r->failures);
	control_gen_str(g, "last_error", r->last_error[0] != '\0' ?
	    r->last_error : NULL);
	yajl_gen_map_close(g);
}

/* reconcile [<user_id>]: a pass now, or one user now. */
static void
control_cmd_reconcile(struct control_client *c, int argc, char **argv)
{
	const struct reconcile_status	*r = reconcile_status();
	yajl_gen			 g;
	int				 rv;

	if (!r->configured) {
		control_error(c, "not_configured");
		return;
	}
	if (!r->enabled) {
		control_error(c, "reconcile_off");
		return;
	}
	if (argc == 1 && control_user(c, argv[0]) != 0)
		return;
	rv = argc == 1 ? reconcile_user(argv[0]) : reconcile_start();
	if (rv != 0) {
		control_error(c, rv == -2 && argc == 1 ? "busy" : "unavailable");
		return;
	}
	if (argc == 1)
		log_info("status socket: uid %u asked to reconcile user %s",
		    (unsigned)c->uid, argv[0]);
	else
		log_info("status socket: uid %u asked for a reconciliation "
		    "pass", (unsigned)c->uid);
	mgmt_wake();
	g = control_gen();
	control_gen_str(g, "reconcile", argc == 1 ? "queued" : "started");
	control_send(c, g, 1);
}

/* Start a backfill run now. */
static void
control_cmd_backfill(struct control_client *c, int argc, char **argv)
{
	yajl_gen	g;

	(void)argc;
	(void)argv;
	if (mgmt_backfill() != 0) {
		control_error(c, "backfill_disabled");
		return;
	}
	log_info("status socket: uid %u asked for a backfill",
	    (unsigned)c->uid);
	g = control_gen();
	control_gen_str(g, "backfill", "started");
	control_send(c, g, 1);
}

/*
 * backup <directory>: a hot backup into an absolute path that does not
 * exist or is an empty directory; answered when it ends.
 */
static void
control_cmd_backup(struct control_client *c, int argc, char **argv)
{
	struct control	*ctl = c->ctl;
	yajl_gen	 g;
	char		*cause;

	(void)argc;
	if (argv[0][0] != '/' || !json_utf8_ok(argv[0], strlen(argv[0]))) {
		control_error(c, "invalid_directory");
		return;
	}
	if (store_backup_running(ctl->store)) {
		control_error(c, "busy");
		return;
	}
	if (store_backup_start(ctl->store, ctl->base, argv[0],
	    ctl->conf->hash_key_file, control_backup_done_cb, ctl,
	    &cause) != 0) {
		log_warnx("status socket: uid %u: backup to %s: %s",
		    (unsigned)c->uid, argv[0], cause);
		g = control_gen();
		control_gen_str(g, "error", "backup_failed");
		control_gen_str(g, "cause", cause);
		control_send(c, g, 0);
		free(cause);
		return;
	}
	log_info("status socket: uid %u pid %ld started a backup to %s",
	    (unsigned)c->uid, (long)c->pid, argv[0]);
	free(ctl->backup_dir);
	ctl->backup_dir = xstrdup(argv[0]);
	ctl->backup_client = c;
	c->backing_up = 1;
}

/* The backup ended: log it, and answer the client if it is still there. */
static void
control_backup_done_cb(const struct store_backup_result *res, void *arg)
{
	struct control		*ctl = arg;
	struct control_client	*c = ctl->backup_client;
	yajl_gen		 g;
	char			 secs[32];

	if (res->ok)
		log_info("backup to %s: %llu file(s), %llu byte(s) in %.3fs",
		    ctl->backup_dir, res->files, res->bytes, res->seconds);
	else
		log_warnx("backup to %s failed: %s", ctl->backup_dir,
		    res->cause);
	ctl->backup_client = NULL;
	if (c == NULL)
		return;
	c->backing_up = 0;
	g = control_gen();
	if (res->ok) {
		control_gen_str(g, "result", "done");
		control_gen_int(g, "files", (long long)res->files);
		control_gen_int(g, "bytes", (long long)res->bytes);
		snprintf(secs, sizeof secs, "%.3f", res->seconds);
		control_gen_key(g, "seconds");
		yajl_gen_number(g, secs, strlen(secs));
	} else {
		control_gen_str(g, "error", "backup_failed");
		control_gen_str(g, "cause", res->cause);
	}
	control_send(c, g, 0);
	control_process(c);
}
