/*
 * Bootstrap: a new deployment on an existing tenant learns every phone
 * factor Auth0 already has ("phoneclaimctl bootstrap"), through the
 * Management API (mgmt.c sends the requests this file asks for).
 *
 * The users are listed by a users export job, the documented way past
 * the 1000 results GET /api/v2/users can page through: POST
 * /api/v2/jobs/users-exports (user_id only, NDJSON), GET /api/v2/jobs/{id}
 * until it is completed, then its location (a link valid 60 seconds,
 * fetched without the token: it is not the tenant's host) into
 * state_dir/bootstrap.export; the file is gzipped, or plain.  A tenant
 * whose plan has no export job (a 4xx other than 401 and 429) is listed
 * with GET /api/v2/users instead, 100 a page, up to the 1000 that it
 * reaches; a tenant with more users is a clear error.
 *
 * Each user's GET /api/v2/users/{id}/authentication-methods answer is
 * settled by verification's rules (verify_apply): a confirmed method with
 * a full number is claimed for the user (source "bootstrap"), or recorded
 * as a conflict when another user holds the number.  Nothing is released
 * but the claims of a user Auth0 no longer knows.  Masked numbers (the
 * tenant obfuscates them) cannot be learned: counted.
 *
 * The run, its counts and its cursor (the line of the export, or the page
 * and the index in it) are kept in meta.db and move in the transaction
 * that applies an answer, so that a restart goes on where it stopped and
 * nothing is applied or counted twice.  A run is started by hand and is
 * not paced; it leaves reconcile_share of the rate-limit bucket to the
 * other jobs, and waits for the reset on a 429 like every request.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <yajl/yajl_tree.h>
#include <zlib.h>

#include "log.h"
#include "phoneclaimd.h"
#include "xmalloc.h"

#define BOOTSTRAP_META		"bootstrap"
#define BOOTSTRAP_FILE		"bootstrap.export"
#define BOOTSTRAP_PER_PAGE	100
#define BOOTSTRAP_SEARCH_MAX	1000	/* GET /api/v2/users reaches this */
#define BOOTSTRAP_LINE_MAX	4096
#define BOOTSTRAP_FLUSH_EVERY	100	/* answers that changed nothing */
#define BOOTSTRAP_POLL_MAX	16	/* seconds between job polls */

enum bootstrap_phase {
	BOOT_NONE = 0,		/* never run */
	BOOT_EXPORT,		/* the export job is to be created */
	BOOT_JOB,		/* waiting for it, then its file */
	BOOT_USERS,		/* reading the users of the file */
	BOOT_PAGES,		/* reading the users of GET /api/v2/users */
	BOOT_DONE,
	BOOT_FAILED
};

enum bootstrap_ask {
	ASK_NONE = 0,
	ASK_EXPORT,
	ASK_JOB,
	ASK_DOWNLOAD,
	ASK_PAGE,
	ASK_METHODS
};

/* The run, as kept in meta.db. */
struct bootstrap_run {
	int		 phase;
	int64_t		 started;
	int64_t		 finished;
	uint64_t	 total;
	uint64_t	 checked;
	uint64_t	 claimed;
	uint64_t	 conflicts;
	uint64_t	 known;
	uint64_t	 masked;
	uint64_t	 missing;
	uint64_t	 refused;
	uint64_t	 line;		/* lines of the file, or index in page */
	uint64_t	 page;
	int		 via_pages;
	char		 job[128];	/* "" if none */
};

struct bootstrap {
	const struct conf	*conf;
	int			 configured;
	int			 loaded;
	struct bootstrap_run	 run;
	enum bootstrap_ask	 ask;		/* the request in flight */
	char			*path;		/* the export file */
	char			*part;		/* while it downloads */
	FILE			*out;
	char			*location;	/* the job's file, for 60 s */
	int			 polls;
	int64_t			 poll_at;	/* seconds */
	gzFile			 gz;		/* the export, being read */
	char			 user[USER_ID_MAX + 1];	/* "" if none */
	uint64_t		 user_line;	/* the line after it */
	char			**page;		/* the users of the page */
	size_t			 npage;
	int			 have_page;
	int64_t			 asked_ms;
	size_t			 unflushed;
	struct bootstrap_status	 st;
};

/* One answer being applied. */
struct bootstrap_op {
	const struct verify_method	*m;
	size_t				 n;
	int				 found;
	int				 skip;
	struct bootstrap_run		 run;	/* as it will be */
	int				 changed;
};

static struct bootstrap	*boot;

static int	bootstrap_parse(const char *, struct bootstrap_run *);
static int	bootstrap_save(struct store_txn *, const struct bootstrap_run *);
static int	bootstrap_load_txn(struct store_txn *, void *);
static int	bootstrap_put_txn(struct store_txn *, void *);
static int	bootstrap_set(const struct bootstrap_run *);
static int	bootstrap_settle_txn(struct store_txn *, void *);
static int	bootstrap_settle(const struct verify_method *, size_t, int, int);
static void	bootstrap_finish(void);
static void	bootstrap_fail(const char *);
static void	bootstrap_close(void);
static void	bootstrap_drop_page(void);
static int	bootstrap_open(void);
static int	bootstrap_read_user(void);
static uint64_t	bootstrap_count_lines(void);
static int	bootstrap_user_of(const char *, size_t, char *);
static char	*bootstrap_methods_url(const char *, const char *);
static int	bootstrap_next_user(const char *, struct bootstrap_req *);
static int	bootstrap_next_page(const char *, struct bootstrap_req *);
static int	bootstrap_export_done(long, const char *, size_t);
static int	bootstrap_job_done(long, const char *, size_t, int64_t *);
static int	bootstrap_download_done(long);
static int	bootstrap_page_done(long, const char *, size_t);
static int	bootstrap_methods_done(long, const char *, size_t, char *,
		    size_t);
static int	bootstrap_retry(long);
static int64_t	bootstrap_now(void);
static const char *bootstrap_ask_name(enum bootstrap_ask);

/* Set up the bootstrap; possible when a Management API client exists. */
void
bootstrap_init(const struct conf *conf, int mgmt)
{
	boot = xcalloc(1, sizeof *boot);
	boot->conf = conf;
	boot->configured = mgmt;
	boot->st.configured = mgmt;
	xasprintf(&boot->path, "%s/%s", conf->state_dir, BOOTSTRAP_FILE);
	xasprintf(&boot->part, "%s/%s.part", conf->state_dir, BOOTSTRAP_FILE);
	/* A replica reads it when it becomes the master (bootstrap_next). */
	if (mgmt && !repl_enabled() &&
	    claims_run(bootstrap_load_txn, &boot->run) == STORE_OK)
		boot->loaded = 1;
}

/* Free the module. */
void
bootstrap_free(void)
{
	if (boot == NULL)
		return;
	bootstrap_close();
	bootstrap_drop_page();
	free(boot->location);
	free(boot->path);
	free(boot->part);
	free(boot);
	boot = NULL;
}

/* Seconds of the wall clock. */
static int64_t
bootstrap_now(void)
{
	return ((int64_t)time(NULL));
}

/* What status and /metrics show. */
const struct bootstrap_status *
bootstrap_status(void)
{
	static const struct bootstrap_status	none = { .state = "never" };
	static const char *const		phases[] = { NULL, "export",
	    "export", "users", "users", NULL, NULL };
	struct bootstrap_status			*st;
	const struct bootstrap_run		*r;

	if (boot == NULL)
		return (&none);
	st = &boot->st;
	r = &boot->run;
	switch (r->phase) {
	case BOOT_NONE:
		st->state = "never";
		break;
	case BOOT_DONE:
		st->state = "done";
		break;
	case BOOT_FAILED:
		st->state = "failed";
		break;
	default:
		st->state = "running";
		break;
	}
	st->phase = phases[r->phase];
	if (r->phase == BOOT_JOB && boot->location != NULL)
		st->phase = "download";
	st->via = r->phase == BOOT_NONE ? NULL : r->via_pages ? "users" :
	    "export";
	st->started = r->started;
	st->finished = r->finished;
	st->total = r->total;
	st->checked = r->checked;
	st->claimed = r->claimed;
	st->conflicts = r->conflicts;
	st->known = r->known;
	st->masked = r->masked;
	st->missing = r->missing;
	st->refused = r->refused;
	return (st);
}

/*
 * Read a run from its meta.db text: phase started finished total checked
 * claimed conflicts known masked missing refused line page via job.
 */
static int
bootstrap_parse(const char *s, struct bootstrap_run *r)
{
	long long	 v[14];
	char		*end;
	size_t		 i;

	memset(r, 0, sizeof *r);
	for (i = 0; i < 14; i++) {
		v[i] = strtoll(s, &end, 10);
		if (end == s || *end != ' ' || v[i] < 0)
			return (-1);
		s = end + 1;
	}
	if (v[0] > BOOT_FAILED || strlen(s) >= sizeof r->job)
		return (-1);
	r->phase = (int)v[0];
	r->started = v[1];
	r->finished = v[2];
	r->total = (uint64_t)v[3];
	r->checked = (uint64_t)v[4];
	r->claimed = (uint64_t)v[5];
	r->conflicts = (uint64_t)v[6];
	r->known = (uint64_t)v[7];
	r->masked = (uint64_t)v[8];
	r->missing = (uint64_t)v[9];
	r->refused = (uint64_t)v[10];
	r->line = (uint64_t)v[11];
	r->page = (uint64_t)v[12];
	r->via_pages = v[13] != 0;
	if (strcmp(s, "-") != 0)
		snprintf(r->job, sizeof r->job, "%s", s);
	return (0);
}

/* Write the run into meta.db, inside txn. */
static int
bootstrap_save(struct store_txn *txn, const struct bootstrap_run *r)
{
	char	*text;
	int	 rv;

	xasprintf(&text, "%d %lld %lld %llu %llu %llu %llu %llu %llu %llu "
	    "%llu %llu %llu %d %s", r->phase, (long long)r->started,
	    (long long)r->finished, (unsigned long long)r->total,
	    (unsigned long long)r->checked, (unsigned long long)r->claimed,
	    (unsigned long long)r->conflicts, (unsigned long long)r->known,
	    (unsigned long long)r->masked, (unsigned long long)r->missing,
	    (unsigned long long)r->refused, (unsigned long long)r->line,
	    (unsigned long long)r->page, r->via_pages,
	    r->job[0] != '\0' ? r->job : "-");
	rv = store_meta_put(txn, BOOTSTRAP_META, text);
	free(text);
	return (rv);
}

/* Read the run kept in meta.db (none: never run). */
static int
bootstrap_load_txn(struct store_txn *txn, void *arg)
{
	struct bootstrap_run	*r = arg;
	char			*text;
	int			 rv;

	memset(r, 0, sizeof *r);
	rv = store_meta_get(txn, BOOTSTRAP_META, &text);
	if (rv == STORE_NOTFOUND)
		return (STORE_OK);
	if (rv != STORE_OK)
		return (rv);
	if (bootstrap_parse(text, r) != 0) {
		log_warnx("bootstrap: unreadable progress in the store; "
		    "run phoneclaimctl bootstrap again");
		memset(r, 0, sizeof *r);
	}
	free(text);
	return (STORE_OK);
}

/* Keep a run. */
static int
bootstrap_put_txn(struct store_txn *txn, void *arg)
{
	return (bootstrap_save(txn, arg));
}

/* Keep the run r, durably, and make it the current one; -1 on failure. */
static int
bootstrap_set(const struct bootstrap_run *r)
{
	if (claims_run(bootstrap_put_txn, (void *)(uintptr_t)r) != STORE_OK ||
	    claims_flush() != STORE_OK)
		return (-1);
	if (&boot->run != r)
		boot->run = *r;
	boot->unflushed = 0;
	return (0);
}

/* Close and remove the export file and what reads it. */
static void
bootstrap_close(void)
{
	if (boot->gz != NULL)
		gzclose(boot->gz);
	boot->gz = NULL;
	if (boot->out != NULL) {
		fclose(boot->out);
		unlink(boot->part);
	}
	boot->out = NULL;
	boot->user[0] = '\0';
}

/* Forget the page of users in memory. */
static void
bootstrap_drop_page(void)
{
	size_t	i;

	for (i = 0; i < boot->npage; i++)
		free(boot->page[i]);
	free(boot->page);
	boot->page = NULL;
	boot->npage = 0;
	boot->have_page = 0;
}

/*
 * Start a run: 0, 1 if one is running already, -1 without a Management
 * API client, -2 if the store failed.
 */
int
bootstrap_start(void)
{
	struct bootstrap_run	r;

	if (boot == NULL || !boot->configured)
		return (-1);
	if (!boot->loaded) {
		if (claims_run(bootstrap_load_txn, &boot->run) != STORE_OK)
			return (-2);
		boot->loaded = 1;
	}
	if (boot->run.phase != BOOT_NONE && boot->run.phase != BOOT_DONE &&
	    boot->run.phase != BOOT_FAILED)
		return (1);
	bootstrap_close();
	bootstrap_drop_page();
	unlink(boot->path);
	free(boot->location);
	boot->location = NULL;
	memset(&r, 0, sizeof r);
	r.phase = BOOT_EXPORT;
	r.started = bootstrap_now();
	if (bootstrap_set(&r) != 0)
		return (-2);
	boot->st.last_error[0] = '\0';
	log_info("bootstrap: started; listing the tenant's users with a users "
	    "export job");
	return (0);
}

/* A request failed (mgmt.c retries it with back-off): count it. */
void
bootstrap_failed(const char *why)
{
	if (boot == NULL)
		return;
	boot->st.failures++;
	snprintf(boot->st.last_error, sizeof boot->st.last_error, "%s", why);
}

/* The run cannot go on: keep it failed, and say why. */
static void
bootstrap_fail(const char *why)
{
	struct bootstrap_run	r = boot->run;

	bootstrap_close();
	bootstrap_drop_page();
	unlink(boot->path);
	r.phase = BOOT_FAILED;
	r.finished = bootstrap_now();
	if (bootstrap_set(&r) != 0)
		log_warnx("bootstrap: the store is unavailable");
	snprintf(boot->st.last_error, sizeof boot->st.last_error, "%s", why);
	log_warnx("bootstrap: failed after %llu user(s): %s",
	    (unsigned long long)r.checked, why);
}

/* Every user was read: keep the summary, and log it. */
static void
bootstrap_finish(void)
{
	struct bootstrap_run	r = boot->run;

	bootstrap_close();
	bootstrap_drop_page();
	unlink(boot->path);
	r.phase = BOOT_DONE;
	r.finished = bootstrap_now();
	if (bootstrap_set(&r) != 0) {
		bootstrap_failed("the store is unavailable");
		return;
	}
	log_info("bootstrap: done in %llds: %llu user(s) checked, %llu "
	    "phone(s) claimed, %llu conflict(s) found, %llu already known, "
	    "%llu masked, %llu user(s) gone, %llu refused",
	    (long long)(r.finished - r.started),
	    (unsigned long long)r.checked, (unsigned long long)r.claimed,
	    (unsigned long long)r.conflicts, (unsigned long long)r.known,
	    (unsigned long long)r.masked, (unsigned long long)r.missing,
	    (unsigned long long)r.refused);
	if (r.masked > 0)
		log_warnx("bootstrap: %llu phone number(s) were masked: turn "
		    "on disable_management_api_sms_obfuscation "
		    "(docs/auth0-setup.md) and run it again",
		    (unsigned long long)r.masked);
}

/*
 * Open the export file and skip the lines read already: 0, or -1 if it
 * cannot be read (it is fetched again).
 */
static int
bootstrap_open(void)
{
	char		 buf[BOOTSTRAP_LINE_MAX];
	uint64_t	 n = 0;
	size_t		 len;

	if ((boot->gz = gzopen(boot->path, "rb")) == NULL)
		return (-1);
	while (n < boot->run.line && gzgets(boot->gz, buf, sizeof buf) !=
	    NULL) {
		len = strlen(buf);
		if (len > 0 && buf[len - 1] == '\n')
			n++;
	}
	if (n < boot->run.line) {
		gzclose(boot->gz);
		boot->gz = NULL;
		return (-1);
	}
	return (0);
}

/* Count the lines of the export file, for progress. */
static uint64_t
bootstrap_count_lines(void)
{
	gzFile		 gz;
	char		 buf[BOOTSTRAP_LINE_MAX];
	uint64_t	 n = 0;
	size_t		 len;
	int		 blank = 1;

	if ((gz = gzopen(boot->path, "rb")) == NULL)
		return (0);
	while (gzgets(gz, buf, sizeof buf) != NULL) {
		len = strlen(buf);
		blank = blank && strspn(buf, " \t\r\n") == len;
		if (len > 0 && buf[len - 1] == '\n') {
			n += !blank;
			blank = 1;
		}
	}
	n += !blank;
	gzclose(gz);
	return (n);
}

/* The user_id of one NDJSON line, into user; 0, or -1 if it has none. */
static int
bootstrap_user_of(const char *line, size_t len, char *user)
{
	const char	*up[] = { "user_id", NULL };
	yajl_val	 root, u;
	char		*cause = NULL;
	int		 rv = -1;

	if ((root = json_parse(line, len, &cause)) == NULL) {
		free(cause);
		return (-1);
	}
	u = yajl_tree_get(root, up, yajl_t_string);
	if (u != NULL && u->u.string[0] != '\0' &&
	    strlen(u->u.string) <= USER_ID_MAX) {
		snprintf(user, USER_ID_MAX + 1, "%s", u->u.string);
		rv = 0;
	}
	json_free(root);
	return (rv);
}

/*
 * The next user of the export file into boot->user: 1, 0 at its end, -1
 * if it cannot be read.  Lines without a user id are passed over.
 */
static int
bootstrap_read_user(void)
{
	char		buf[BOOTSTRAP_LINE_MAX];
	uint64_t	line = boot->run.line;
	size_t		len;
	int		whole;

	if (boot->gz == NULL && bootstrap_open() != 0)
		return (-1);
	for (;;) {
		if (gzgets(boot->gz, buf, sizeof buf) == NULL) {
			if (!gzeof(boot->gz))
				return (-1);
			boot->user_line = line;
			return (0);
		}
		len = strlen(buf);
		whole = len > 0 && buf[len - 1] == '\n';
		if (!whole && !gzeof(boot->gz)) {
			/* Too long for a user id: pass over the rest. */
			while (gzgets(boot->gz, buf, sizeof buf) != NULL &&
			    buf[strlen(buf) - 1] != '\n')
				;
			line++;
			continue;
		}
		line++;
		if (bootstrap_user_of(buf, len, boot->user) == 0) {
			boot->user_line = line;
			return (1);
		}
	}
}

/* The URL of a user's authentication methods. */
static char *
bootstrap_methods_url(const char *base, const char *user_id)
{
	char	*user, *url;

	if ((user = curl_easy_escape(NULL, user_id, 0)) == NULL)
		fatalx("curl_easy_escape");
	xasprintf(&url, "%s/api/v2/users/%s/authentication-methods", base,
	    user);
	curl_free(user);
	return (url);
}

/* Ask for the methods of the next user of the file; 0 at its end. */
static int
bootstrap_next_user(const char *base, struct bootstrap_req *req)
{
	struct bootstrap_run	r;
	int			rv;

	memset(&r, 0, sizeof r);

	if (boot->user[0] == '\0') {
		if ((rv = bootstrap_read_user()) < 0) {
			/*
			 * Gone (another master ran it) or damaged: start
			 * over; what was claimed stays, and is counted known.
			 */
			log_warnx("bootstrap: cannot read %s; starting over "
			    "with a new users export", boot->path);
			bootstrap_close();
			r.started = boot->run.started;
			r.phase = BOOT_EXPORT;
			if (bootstrap_set(&r) != 0) {
				boot->run = r;
				bootstrap_failed("the store is unavailable");
			}
			return (-1);
		}
		if (rv == 0) {
			bootstrap_finish();
			return (0);
		}
	}
	req->url = bootstrap_methods_url(base, boot->user);
	req->auth = 1;
	boot->ask = ASK_METHODS;
	return (1);
}

/* Ask for the page of users, or the next user of it; 0 at the end. */
static int
bootstrap_next_page(const char *base, struct bootstrap_req *req)
{
	if (boot->have_page && boot->run.line >= boot->npage) {
		if (boot->npage < BOOTSTRAP_PER_PAGE) {
			bootstrap_finish();
			return (0);
		}
		bootstrap_drop_page();
		boot->run.page++;
		boot->run.line = 0;
	}
	while (boot->have_page && boot->run.line < boot->npage &&
	    boot->page[boot->run.line][0] == '\0')
		boot->run.line++;	/* no user id: nothing to read */
	if (boot->have_page && boot->run.line >= boot->npage)
		return (bootstrap_next_page(base, req));
	if (!boot->have_page &&
	    (boot->run.page + 1) * BOOTSTRAP_PER_PAGE > BOOTSTRAP_SEARCH_MAX) {
		if (boot->run.total == 0)
			log_warnx("bootstrap: GET /api/v2/users reaches %d "
			    "users; any past them were not checked",
			    BOOTSTRAP_SEARCH_MAX);
		bootstrap_finish();
		return (0);
	}
	if (!boot->have_page) {
		xasprintf(&req->url, "%s/api/v2/users?page=%llu&per_page=%d&"
		    "include_totals=true&fields=user_id&include_fields=true&"
		    "sort=created_at%%3A1&search_engine=v3", base,
		    (unsigned long long)boot->run.page, BOOTSTRAP_PER_PAGE);
		boot->ask = ASK_PAGE;
	} else {
		snprintf(boot->user, sizeof boot->user, "%s",
		    boot->page[boot->run.line]);
		boot->user_line = boot->run.line + 1;
		req->url = bootstrap_methods_url(base, boot->user);
		boot->ask = ASK_METHODS;
	}
	req->auth = 1;
	return (1);
}

/*
 * The request to send next for the tenant at base, into req: 1, or 0 if
 * none is due (*wait: seconds until one is, or -1).
 */
int
bootstrap_next(const char *base, struct bootstrap_req *req, int64_t *wait)
{
	char	*id;
	int64_t	 now = bootstrap_now();
	int	 rv;

	memset(req, 0, sizeof *req);
	*wait = -1;
	if (boot == NULL || !boot->configured)
		return (0);
	if (!boot->loaded) {
		if (claims_run(bootstrap_load_txn, &boot->run) != STORE_OK)
			return (0);
		boot->loaded = 1;
	}
	boot->ask = ASK_NONE;
	switch (boot->run.phase) {
	case BOOT_EXPORT:
		xasprintf(&req->url, "%s/api/v2/jobs/users-exports", base);
		req->post = xstrdup("{\"format\":\"json\",\"fields\":"
		    "[{\"name\":\"user_id\"}]}");
		req->auth = 1;
		boot->ask = ASK_EXPORT;
		return (1);
	case BOOT_JOB:
		if (boot->location != NULL) {
			if (boot->out != NULL)
				fclose(boot->out);
			if ((boot->out = fopen(boot->part, "w")) == NULL) {
				bootstrap_failed("cannot write the export "
				    "file");
				log_warn("bootstrap: %s", boot->part);
				*wait = 10;
				return (0);
			}
			req->url = xstrdup(boot->location);
			req->out = boot->out;
			boot->ask = ASK_DOWNLOAD;
			return (1);
		}
		if (now < boot->poll_at) {
			*wait = boot->poll_at - now;
			return (0);
		}
		if ((id = curl_easy_escape(NULL, boot->run.job, 0)) == NULL)
			fatalx("curl_easy_escape");
		xasprintf(&req->url, "%s/api/v2/jobs/%s", base, id);
		curl_free(id);
		req->auth = 1;
		boot->ask = ASK_JOB;
		return (1);
	case BOOT_USERS:
		/* The file gone: the users are exported again. */
		if ((rv = bootstrap_next_user(base, req)) < 0)
			return (bootstrap_next(base, req, wait));
		break;
	case BOOT_PAGES:
		rv = bootstrap_next_page(base, req);
		break;
	default:
		return (0);
	}
	if (rv == 1)
		boot->asked_ms = claims_clock_ms();
	return (rv);
}

/* Free what a request holds (not the file it writes to). */
void
bootstrap_req_clear(struct bootstrap_req *req)
{
	free(req->url);
	free(req->post);
	memset(req, 0, sizeof *req);
}

/* Return 1 if an answer is to be asked for again (rate limit, 5xx). */
static int
bootstrap_retry(long code)
{
	return (code == 429 || code >= 500 || code < 200 ||
	    (code >= 300 && code < 400));
}

/* The export job was created, or refused: go on. */
static int
bootstrap_export_done(long code, const char *body, size_t len)
{
	const char		*ip[] = { "id", NULL };
	struct bootstrap_run	 r = boot->run;
	yajl_val		 root, id;
	char			*cause = NULL;

	if (code >= 400) {
		/* No export job on this plan (or no such scope). */
		log_warnx("bootstrap: POST /api/v2/jobs/users-exports refused "
		    "(HTTP %ld); listing users with GET /api/v2/users, which "
		    "reaches %d at most", code, BOOTSTRAP_SEARCH_MAX);
		r.phase = BOOT_PAGES;
		r.via_pages = 1;
		r.page = r.line = 0;
		return (bootstrap_set(&r));
	}
	if ((root = json_parse(body, len, &cause)) == NULL) {
		free(cause);
		return (-1);
	}
	id = yajl_tree_get(root, ip, yajl_t_string);
	if (id == NULL || id->u.string[0] == '\0' ||
	    strlen(id->u.string) >= sizeof r.job) {
		json_free(root);
		return (-1);
	}
	snprintf(r.job, sizeof r.job, "%s", id->u.string);
	json_free(root);
	r.phase = BOOT_JOB;
	boot->polls = 0;
	boot->poll_at = bootstrap_now() + 1;
	log_info("bootstrap: users export job %s created", r.job);
	return (bootstrap_set(&r));
}

/* The job's state: wait, fetch its file, or start again. */
static int
bootstrap_job_done(long code, const char *body, size_t len, int64_t *wait)
{
	const char		*sp[] = { "status", NULL };
	const char		*lp[] = { "location", NULL };
	const char		*dp[] = { "status_details", NULL };
	struct bootstrap_run	 r = boot->run;
	yajl_val		 root, s, loc, d;
	char			*cause = NULL, why[160];

	if (code == 404) {
		/* Jobs are deleted after 24 hours: export again. */
		r.phase = BOOT_EXPORT;
		r.job[0] = '\0';
		return (bootstrap_set(&r));
	}
	if (code != 200 || (root = json_parse(body, len, &cause)) == NULL) {
		free(cause);
		return (-1);
	}
	s = yajl_tree_get(root, sp, yajl_t_string);
	loc = yajl_tree_get(root, lp, yajl_t_string);
	if (s != NULL && strcmp(s->u.string, "completed") == 0 &&
	    loc != NULL && (strncmp(loc->u.string, "https://", 8) == 0 ||
	    strncmp(loc->u.string, "http://", 7) == 0)) {
		free(boot->location);
		boot->location = xstrdup(loc->u.string);
		*wait = 0;
	} else if (s != NULL && strcmp(s->u.string, "failed") == 0) {
		d = yajl_tree_get(root, dp, yajl_t_string);
		snprintf(why, sizeof why, "the users export job failed%s%.100s",
		    d != NULL ? ": " : "", d != NULL ? d->u.string : "");
		json_free(root);
		bootstrap_fail(why);
		return (0);
	} else {
		if (boot->polls < 5)
			boot->polls++;
		*wait = 1 << (boot->polls - 1);
		if (*wait > BOOTSTRAP_POLL_MAX)
			*wait = BOOTSTRAP_POLL_MAX;
		boot->poll_at = bootstrap_now() + *wait;
	}
	json_free(root);
	return (0);
}

/* The export file arrived (or not: the job is asked for a new link). */
static int
bootstrap_download_done(long code)
{
	struct bootstrap_run	r = boot->run;
	int			fail;

	free(boot->location);
	boot->location = NULL;
	if (boot->out == NULL)
		return (-1);
	fail = fflush(boot->out) != 0 || fsync(fileno(boot->out)) != 0;
	fail |= fclose(boot->out) != 0;
	boot->out = NULL;
	if (code != 200 || fail || rename(boot->part, boot->path) != 0) {
		unlink(boot->part);
		return (-1);
	}
	r.phase = BOOT_USERS;
	r.line = 0;
	r.total = bootstrap_count_lines();
	log_info("bootstrap: the export lists %llu user(s)",
	    (unsigned long long)r.total);
	return (bootstrap_set(&r));
}

/* A page of GET /api/v2/users: its users, in memory. */
static int
bootstrap_page_done(long code, const char *body, size_t len)
{
	const char	*up[] = { "users", NULL };
	const char	*tp[] = { "total", NULL };
	const char	*ip[] = { "user_id", NULL };
	yajl_val	 root, users, total, u;
	char		*cause = NULL, why[160];
	size_t		 i;

	if (code != 200 || (root = json_parse(body, len, &cause)) == NULL) {
		free(cause);
		return (-1);
	}
	users = YAJL_IS_ARRAY(root) ? root :
	    yajl_tree_get(root, up, yajl_t_array);
	total = yajl_tree_get(root, tp, yajl_t_number);
	if (users == NULL) {
		json_free(root);
		return (-1);
	}
	if (total != NULL && YAJL_IS_INTEGER(total) &&
	    YAJL_GET_INTEGER(total) > BOOTSTRAP_SEARCH_MAX) {
		snprintf(why, sizeof why, "the tenant has %lld users and GET "
		    "/api/v2/users reaches %d: the users export job is needed "
		    "(a paid plan, scope read:users)",
		    (long long)YAJL_GET_INTEGER(total), BOOTSTRAP_SEARCH_MAX);
		json_free(root);
		bootstrap_fail(why);
		return (0);
	}
	if (total != NULL && YAJL_IS_INTEGER(total) && boot->run.page == 0)
		boot->run.total = (uint64_t)YAJL_GET_INTEGER(total);
	bootstrap_drop_page();
	boot->page = xcalloc(users->u.array.len + 1, sizeof *boot->page);
	for (i = 0; i < users->u.array.len; i++) {
		u = yajl_tree_get(users->u.array.values[i], ip,
		    yajl_t_string);
		/* Every entry keeps its place: the cursor counts them. */
		boot->page[boot->npage++] = xstrdup(u != NULL &&
		    strlen(u->u.string) <= USER_ID_MAX ? u->u.string : "");
	}
	boot->have_page = 1;
	json_free(root);
	return (0);
}

/* Apply one user's answer, count it and move the cursor, in one txn. */
static int
bootstrap_settle_txn(struct store_txn *txn, void *arg)
{
	struct bootstrap_op	*op = arg;
	struct verify_answer	 a;
	size_t			 i, full = 0;
	int			 rv = STORE_OK;

	op->run = boot->run;
	op->changed = 0;
	if (!op->skip) {
		memset(&a, 0, sizeof a);
		a.user_id = boot->user;
		a.m = op->m;
		a.n = op->n;
		a.found = op->found;
		a.now = bootstrap_now();
		a.when.ms = boot->asked_ms;
		a.when.kind = CLAIMS_DATED;
		a.source = CLAIM_SRC_BOOTSTRAP;
		if ((rv = verify_apply(txn, &a)) != STORE_OK)
			return (rv);
		for (i = 0; i < op->n; i++) {
			if (!op->m[i].confirmed)
				continue;
			if (op->m[i].full)
				full++;
			else
				op->run.masked++;
		}
		op->run.claimed += a.r.claimed - a.r.conflicts;
		op->run.conflicts += a.r.conflicts;
		if (full > a.r.claimed)
			op->run.known += full - a.r.claimed;
		op->changed = a.r.claimed + a.r.activated + a.r.released > 0;
	}
	op->run.missing += !op->found && !op->skip;
	op->run.refused += op->skip;
	op->run.checked++;
	op->run.line = boot->user_line;
	op->changed |= !op->found || op->skip;
	return (bootstrap_save(txn, &op->run));
}

/*
 * Settle the user being read from the n phone methods Auth0 listed (found
 * 0: Auth0 does not know the user; skip: it refused the user id); -1 if
 * the store failed (the same user is read again).
 */
static int
bootstrap_settle(const struct verify_method *m, size_t n, int found,
    int skip)
{
	struct bootstrap_op	op;
	char			who[DEADLETTER_LOG_SIZE];

	memset(&op, 0, sizeof op);
	op.m = m;
	op.n = n;
	op.found = found;
	op.skip = skip;
	if (claims_run(bootstrap_settle_txn, &op) != STORE_OK)
		return (-1);
	/* Changes are made durable now; the cursor alone now and then. */
	if ((op.changed || ++boot->unflushed >= BOOTSTRAP_FLUSH_EVERY) &&
	    claims_flush() != STORE_OK)
		return (-1);
	if (op.changed)
		boot->unflushed = 0;
	if (op.changed)
		log_info("bootstrap: user %s%s: %zu phone method(s); %llu "
		    "claimed, %llu conflict(s) so far",
		    deadletter_log_value(boot->user, who),
		    skip ? " refused by Auth0 (HTTP 400)" : found ? "" :
		    " does not exist", n,
		    (unsigned long long)op.run.claimed,
		    (unsigned long long)op.run.conflicts);
	boot->run = op.run;
	boot->user[0] = '\0';
	return (0);
}

/* A user's methods: settle them, or ask again. */
static int
bootstrap_methods_done(long code, const char *body, size_t len, char *why,
    size_t whylen)
{
	struct verify_method	*m = NULL;
	size_t			 n = 0;
	char			*cause = NULL;
	int			 found = 1, skip = 0, rv;

	if (code == 400)
		skip = 1;
	else if (code == 404 && verify_no_such_user(body, len))
		found = 0;
	else if (code != 200) {
		snprintf(why, whylen, "GET authentication methods: HTTP %ld",
		    code);
		return (-1);
	} else if (verify_methods(body != NULL ? body : "", len, &m, &n,
	    &cause) != 0) {
		snprintf(why, whylen, "GET authentication methods: %s", cause);
		free(cause);
		return (-1);
	}
	rv = bootstrap_settle(m, n, found, skip);
	free(m);
	if (rv != 0)
		snprintf(why, whylen, "the store is unavailable");
	return (rv);
}

/*
 * The answer (HTTP code, body) to the request bootstrap_next made: 0 to
 * go on after *wait seconds, or -1 to send it again with back-off (why
 * says what failed).
 */
int
bootstrap_done(long code, const char *body, size_t len, char *why,
    size_t whylen, int64_t *wait)
{
	enum bootstrap_ask	ask;
	int			rv;

	*wait = 0;
	if (boot == NULL || boot->ask == ASK_NONE)
		return (0);
	ask = boot->ask;
	boot->ask = ASK_NONE;
	if (body == NULL)
		body = "";
	if (ask != ASK_EXPORT && ask != ASK_DOWNLOAD && (code == 401 ||
	    code == 403 || (code >= 400 && code < 500 && code != 429 &&
	    code != 404 && ask != ASK_METHODS))) {
		/* The client lacks a scope: nothing to retry. */
		snprintf(why, whylen, "%s: HTTP %ld (the client needs the "
		    "scopes read:users, create:users and "
		    "read:authentication_methods)", bootstrap_ask_name(ask),
		    code);
		bootstrap_fail(why);
		return (0);
	}
	if (ask == ASK_DOWNLOAD) {
		if ((rv = bootstrap_download_done(code)) != 0)
			snprintf(why, whylen, "download of the users export: "
			    "HTTP %ld", code);
		return (rv);
	}
	if (ask == ASK_METHODS)
		return (bootstrap_methods_done(code, body, len, why, whylen));
	if (bootstrap_retry(code)) {
		snprintf(why, whylen, "%s: HTTP %ld", bootstrap_ask_name(ask),
		    code);
		return (-1);
	}
	if (ask == ASK_EXPORT)
		rv = bootstrap_export_done(code, body, len);
	else if (ask == ASK_JOB)
		rv = bootstrap_job_done(code, body, len, wait);
	else
		rv = bootstrap_page_done(code, body, len);
	if (rv != 0)
		snprintf(why, whylen, "%s: HTTP %ld, not the expected answer",
		    bootstrap_ask_name(ask), code);
	return (rv);
}

/* A request, for the log. */
static const char *
bootstrap_ask_name(enum bootstrap_ask ask)
{
	switch (ask) {
	case ASK_EXPORT:
		return ("POST /api/v2/jobs/users-exports");
	case ASK_JOB:
		return ("GET /api/v2/jobs/{id}");
	case ASK_DOWNLOAD:
		return ("download of the users export");
	case ASK_PAGE:
		return ("GET /api/v2/users");
	default:
		return ("GET authentication methods");
	}
}
