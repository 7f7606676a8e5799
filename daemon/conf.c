/*
 * Configuration: a table of keys drives a "key = value" line parser.  Every
 * error names the file and line.  Secret files must be private.
 */
#include "config.h"

#include <sys/stat.h>

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "phone.h"
#include "phoneclaimd.h"
#include "xmalloc.h"

#define CONF_LINE_MAX	4096
#define SECRET_MAX	4096

enum conf_type {
	CONF_STRING,
	CONF_PATH,
	CONF_SECRET_PATH,
	CONF_NUMBER,
	CONF_MODE,
	CONF_LEVEL,
	CONF_REGION,
	CONF_ADDRESS,
	CONF_PEER		/* repeatable: appended to repl_peers */
};

struct conf_key {
	const char	*name;
	enum conf_type	 type;
	size_t		 offset;
	long long	 min;
	long long	 max;
	const char	*dflt;		/* NULL: no default */
	int		 required;
};

static const struct conf_key conf_keys[] = {
	{ "listen", CONF_ADDRESS, offsetof(struct conf, listen), 0, 0,
	  "127.0.0.1:8080", 0 },
	{ "state_dir", CONF_PATH, offsetof(struct conf, state_dir), 0, 0,
	  "/var/lib/phoneclaimd", 0 },
	{ "status_socket", CONF_PATH, offsetof(struct conf, status_socket),
	  0, 0, "/run/phoneclaimd/status.sock", 0 },
	{ "api_token_file", CONF_SECRET_PATH,
	  offsetof(struct conf, api_token_file), 0, 0, NULL, 1 },
	{ "log_stream_token_file", CONF_SECRET_PATH,
	  offsetof(struct conf, log_stream_token_file), 0, 0, NULL, 1 },
	{ "hash_key_file", CONF_PATH, offsetof(struct conf, hash_key_file),
	  0, 0, NULL, 0 },
	{ "mode", CONF_MODE, offsetof(struct conf, mode), 0, 0, "enforce",
	  0 },
	{ "pending_ttl", CONF_NUMBER, offsetof(struct conf, pending_ttl), 1,
	  86400, "600", 0 },
	{ "max_users_per_number", CONF_NUMBER,
	  offsetof(struct conf, max_users_per_number), 1, 1000, "1", 0 },
	{ "max_reservations_per_user", CONF_NUMBER,
	  offsetof(struct conf, max_reservations_per_user), 0, 1000000, "10",
	  0 },
	{ "exempt_numbers_file", CONF_PATH,
	  offsetof(struct conf, exempt_numbers_file), 0, 0, NULL, 0 },
	{ "default_region", CONF_REGION,
	  offsetof(struct conf, default_region), 0, 0, NULL, 0 },
	{ "max_body_size", CONF_NUMBER, offsetof(struct conf, max_body_size),
	  1024, 1073741824, "8388608", 0 },
	{ "max_body_memory", CONF_NUMBER,
	  offsetof(struct conf, max_body_memory), 1048576, 68719476736,
	  "67108864", 0 },
	{ "cache_size", CONF_NUMBER, offsetof(struct conf, cache_size),
	  1048576, 68719476736, "134217728", 0 },
	{ "log_file_size", CONF_NUMBER, offsetof(struct conf, log_file_size),
	  65536, 1073741824, "10485760", 0 },
	{ "checkpoint_interval", CONF_NUMBER,
	  offsetof(struct conf, checkpoint_interval), 1, 3600, "60", 0 },
	{ "dedup_retention", CONF_NUMBER,
	  offsetof(struct conf, dedup_retention), 3600, 31536000, "2592000",
	  0 },
	{ "log_level", CONF_LEVEL, offsetof(struct conf, log_level), 0, 0,
	  "info", 0 },
	{ "request_timeout", CONF_NUMBER,
	  offsetof(struct conf, request_timeout), 1, 3600, "10", 0 },
	{ "max_connections", CONF_NUMBER,
	  offsetof(struct conf, max_connections), 1, 65536, "1024", 0 },
	/* No default here: conf_finish counts the cores. */
	{ "threads", CONF_NUMBER, offsetof(struct conf, threads), 1, 256,
	  NULL, 0 },
	{ "tls_cert_file", CONF_PATH, offsetof(struct conf, tls_cert_file), 0,
	  0, NULL, 0 },
	{ "tls_key_file", CONF_SECRET_PATH, offsetof(struct conf, tls_key_file),
	  0, 0, NULL, 0 },
	{ "auth0_domain", CONF_STRING, offsetof(struct conf, auth0_domain), 0,
	  0, NULL, 0 },
	{ "auth0_client_id", CONF_STRING,
	  offsetof(struct conf, auth0_client_id), 0, 0, NULL, 0 },
	{ "auth0_client_secret_file", CONF_SECRET_PATH,
	  offsetof(struct conf, auth0_client_secret_file), 0, 0, NULL, 0 },
	{ "auth0_base_url", CONF_STRING, offsetof(struct conf, auth0_base_url),
	  0, 0, NULL, 0 },
	{ "backfill_idle", CONF_NUMBER, offsetof(struct conf, backfill_idle),
	  10, 86400, "300", 0 },
	{ "backfill_since", CONF_STRING,
	  offsetof(struct conf, backfill_since), 0, 0, NULL, 0 },
	{ "on_conflict", CONF_STRING, offsetof(struct conf, on_conflict), 0, 0,
	  "report", 0 },
	{ "reconcile_interval", CONF_NUMBER,
	  offsetof(struct conf, reconcile_interval), 0, 31536000, "604800",
	  0 },
	{ "reconcile_share", CONF_NUMBER,
	  offsetof(struct conf, reconcile_share), 1, 100, "20", 0 },
	{ "repl_local", CONF_ADDRESS, offsetof(struct conf, repl_local), 0, 0,
	  NULL, 0 },
	{ "repl_peer", CONF_PEER, offsetof(struct conf, repl_peers), 0, 0,
	  NULL, 0 },
	{ "repl_priority", CONF_NUMBER, offsetof(struct conf, repl_priority),
	  0, 1000000, "100", 0 },
	{ "repl_ack_policy", CONF_STRING,
	  offsetof(struct conf, repl_ack_policy), 0, 0, "quorum", 0 },
	{ "repl_ack_durability", CONF_STRING,
	  offsetof(struct conf, repl_ack_durability), 0, 0, "disk", 0 },
	{ "repl_ack_timeout", CONF_NUMBER,
	  offsetof(struct conf, repl_ack_timeout), 10, 600000, "5000", 0 },
	{ "repl_election_timeout", CONF_NUMBER,
	  offsetof(struct conf, repl_election_timeout), 100, 600000, "2000",
	  0 },
	{ "repl_heartbeat", CONF_NUMBER, offsetof(struct conf, repl_heartbeat),
	  50, 600000, "1000", 0 },
	{ "repl_forward_timeout", CONF_NUMBER,
	  offsetof(struct conf, repl_forward_timeout), 100, 3600000, "8000",
	  0 },
	{ "repl_clock_warn", CONF_NUMBER,
	  offsetof(struct conf, repl_clock_warn), 1, 86400000, "1000", 0 },
	{ "repl_ca_file", CONF_PATH, offsetof(struct conf, repl_ca_file), 0, 0,
	  NULL, 0 },
};
#define CONF_NKEYS (sizeof conf_keys / sizeof conf_keys[0])

static int	conf_lineno;	/* of the line being parsed, for repl_peer */

static const char *conf_level_names[] = { "error", "warning", "info",
    "debug" };
static const char *conf_mode_names[] = { "enforce", "monitor" };

static const struct conf_key *conf_find(const char *);
static int	conf_set(struct conf *, const struct conf_key *,
		    const char *, char **);
static int	conf_set_number(const struct conf_key *, const char *,
		    long long *, char **);
static int	conf_set_address(const char *, const char *, char **);
static int	conf_add_peer(struct conf *, const char *, char **);
static int	conf_check_repl(struct conf *, const char *, const int *,
		    char **);
static int	conf_lookup_name(const char **, size_t, const char *);
static int	conf_parse_line(struct conf *, char *, int, int *, char **);
static int	conf_finish(struct conf *, const char *, const int *,
		    char **);
static int	conf_check_pair(const char *, const int *, const char *,
		    const char *, char **);
static int	conf_check_auth0(struct conf *, const char *, const int *,
		    char **);
static int	conf_base_url_ok(const char *);
static long long conf_cores(void);
static int	conf_parse_date(const char *, int64_t *);

/* Return the name of key i, or NULL past the end: for docs and tests. */
const char *
conf_key_name(size_t i)
{
	if (i >= CONF_NKEYS)
		return (NULL);
	return (conf_keys[i].name);
}

/* Return the name of a mode. */
const char *
conf_mode_name(int mode)
{
	if (mode < 0 || mode > CONF_MODE_MONITOR)
		return ("unknown");
	return (conf_mode_names[mode]);
}

/* Find a key by name. */
static const struct conf_key *
conf_find(const char *name)
{
	size_t	i;

	for (i = 0; i < CONF_NKEYS; i++) {
		if (strcmp(conf_keys[i].name, name) == 0)
			return (&conf_keys[i]);
	}
	return (NULL);
}

/* Return the index of name in a list, or -1. */
static int
conf_lookup_name(const char **names, size_t n, const char *name)
{
	size_t	i;

	for (i = 0; i < n; i++) {
		if (strcmp(names[i], name) == 0)
			return ((int)i);
	}
	return (-1);
}

/* Parse a decimal number within the key's range. */
static int
conf_set_number(const struct conf_key *k, const char *value, long long *out,
    char **cause)
{
	char		*end;
	long long	 n;

	errno = 0;
	n = strtoll(value, &end, 10);
	if (*value == '\0' || *end != '\0' || errno == ERANGE ||
	    !isdigit((unsigned char)*value)) {
		xasprintf(cause, "%s: not a number: %s", k->name, value);
		return (-1);
	}
	if (n < k->min || n > k->max) {
		xasprintf(cause, "%s: %lld is out of range (%lld to %lld)",
		    k->name, n, k->min, k->max);
		return (-1);
	}
	*out = n;
	return (0);
}

/* Check that an address is host:port or [v6]:port with a valid port. */
static int
conf_set_address(const char *name, const char *value, char **cause)
{
	const char	*colon, *end;
	char		*e;
	long		 port;

	if (*value == '[') {
		if ((end = strchr(value, ']')) == NULL || end[1] != ':' ||
		    end == value + 1)
			goto bad;
		colon = end + 1;
	} else {
		colon = strrchr(value, ':');
		if (colon == NULL || colon == value ||
		    memchr(value, ':', colon - value) != NULL)
			goto bad;
	}
	errno = 0;
	port = strtol(colon + 1, &e, 10);
	if (colon[1] == '\0' || *e != '\0' || port < 0 || port > 65535)
		goto bad;
	return (0);
bad:
	xasprintf(cause, "%s: expected host:port or [address]:port: %s",
	    name, value);
	return (-1);
}

/*
 * repl_peer = REPL-ADDRESS API-ADDRESS: a member of the replication group,
 * by the address its replication manager listens on and the address of its
 * HTTP API (where a replica forwards writes while that peer is master).
 */
static int
conf_add_peer(struct conf *c, const char *value, char **cause)
{
	struct conf_peer	*p;
	char			*copy, *repl, *api, *extra, *save;
	size_t			 i;

	copy = xstrdup(value);
	repl = strtok_r(copy, " \t", &save);
	api = strtok_r(NULL, " \t", &save);
	extra = strtok_r(NULL, " \t", &save);
	if (repl == NULL || api == NULL || extra != NULL) {
		xasprintf(cause, "repl_peer: expected the peer's replication "
		    "address and its API address (host:port host:port): %s",
		    value);
		goto fail;
	}
	if (conf_set_address("repl_peer", repl, cause) != 0 ||
	    conf_set_address("repl_peer", api, cause) != 0)
		goto fail;
	for (i = 0; i < c->repl_npeers; i++) {
		if (strcmp(c->repl_peers[i].repl, repl) == 0) {
			xasprintf(cause, "repl_peer: %s is already a peer "
			    "(line %d)", repl, c->repl_peers[i].line);
			goto fail;
		}
	}
	if (c->repl_npeers == CONF_PEERS_MAX) {
		xasprintf(cause, "repl_peer: at most %d peers",
		    CONF_PEERS_MAX);
		goto fail;
	}
	p = &c->repl_peers[c->repl_npeers++];
	p->repl = xstrdup(repl);
	p->api = xstrdup(api);
	p->line = conf_lineno;
	free(copy);
	return (0);
fail:
	free(copy);
	return (-1);
}

/* Store value for key k in c. */
static int
conf_set(struct conf *c, const struct conf_key *k, const char *value,
    char **cause)
{
	char	**sp = (char **)((char *)c + k->offset);
	int	 *ip = (int *)((char *)c + k->offset);
	int	  i;

	switch (k->type) {
	case CONF_NUMBER:
		return (conf_set_number(k, value,
		    (long long *)((char *)c + k->offset), cause));
	case CONF_MODE:
		i = conf_lookup_name(conf_mode_names, 2, value);
		if (i == -1) {
			xasprintf(cause, "mode: expected enforce or monitor: "
			    "%s", value);
			return (-1);
		}
		*ip = i;
		return (0);
	case CONF_LEVEL:
		i = conf_lookup_name(conf_level_names, 4, value);
		if (i == -1) {
			xasprintf(cause, "log_level: expected debug, info, "
			    "warning or error: %s", value);
			return (-1);
		}
		*ip = i;
		return (0);
	case CONF_REGION:
		if (strlen(value) != 2 || !isupper((unsigned char)value[0]) ||
		    !isupper((unsigned char)value[1]) ||
		    !phone_region_known(value)) {
			xasprintf(cause, "default_region: not a known ISO 3166 "
			    "region in capitals (like US or GB): %s",
			    value);
			return (-1);
		}
		break;
	case CONF_ADDRESS:
		if (conf_set_address(k->name, value, cause) != 0)
			return (-1);
		break;
	case CONF_PEER:
		return (conf_add_peer(c, value, cause));
	case CONF_PATH:
	case CONF_SECRET_PATH:
		if (*value != '/') {
			xasprintf(cause, "%s: must be an absolute path: %s",
			    k->name, value);
			return (-1);
		}
		break;
	case CONF_STRING:
		break;
	}
	free(*sp);
	*sp = xstrdup(value);
	return (0);
}

/*
 * Parse one line: strip the comment and blanks, split at '=', set the key.
 * seen[] records the line of each key for later messages.
 */
static int
conf_parse_line(struct conf *c, char *line, int lineno, int *seen,
    char **cause)
{
	const struct conf_key	*k;
	char			*eq, *key, *value, *end;

	if ((end = strchr(line, '#')) != NULL)
		*end = '\0';
	end = line + strlen(line);
	while (end > line && isspace((unsigned char)end[-1]))
		*--end = '\0';
	key = line + strspn(line, " \t");
	if (*key == '\0')
		return (0);
	if ((eq = strchr(key, '=')) == NULL) {
		xasprintf(cause, "expected key = value");
		return (-1);
	}
	value = eq + 1 + strspn(eq + 1, " \t");
	while (eq > key && isspace((unsigned char)eq[-1]))
		eq--;
	*eq = '\0';
	if ((k = conf_find(key)) == NULL) {
		xasprintf(cause, "unknown key: %s", key);
		return (-1);
	}
	if (seen[k - conf_keys] != 0 && k->type != CONF_PEER) {
		xasprintf(cause, "%s: already set on line %d", key,
		    seen[k - conf_keys]);
		return (-1);
	}
	if (*value == '\0') {
		xasprintf(cause, "%s: missing value", key);
		return (-1);
	}
	conf_lineno = lineno;
	if (conf_set(c, k, value, cause) != 0)
		return (-1);
	if (seen[k - conf_keys] == 0)
		seen[k - conf_keys] = lineno;
	return (0);
}

/* Check required keys and the secret files, and fill derived defaults. */
static int
conf_finish(struct conf *c, const char *path, const int *seen, char **cause)
{
	size_t	 i;
	char	*why, **sp;

	for (i = 0; i < CONF_NKEYS; i++) {
		if (conf_keys[i].required && seen[i] == 0) {
			xasprintf(cause, "%s: missing required key %s", path,
			    conf_keys[i].name);
			return (-1);
		}
		if (conf_keys[i].type != CONF_SECRET_PATH || seen[i] == 0)
			continue;
		sp = (char **)((char *)c + conf_keys[i].offset);
		if (conf_check_private(*sp, &why) != 0) {
			xasprintf(cause, "%s:%d: %s: %s", path, seen[i],
			    conf_keys[i].name, why);
			free(why);
			return (-1);
		}
	}
	if (conf_check_pair(path, seen, "tls_cert_file", "tls_key_file",
	    cause) != 0)
		return (-1);
	if (conf_check_auth0(c, path, seen, cause) != 0)
		return (-1);
	if (conf_check_repl(c, path, seen, cause) != 0)
		return (-1);
	if (c->hash_key_file == NULL)
		xasprintf(&c->hash_key_file, "%s/hash.key", c->state_dir);
	if (seen[conf_find("threads") - conf_keys] == 0)
		c->threads = conf_cores();
	return (0);
}

/* The default of threads: the cores online, within the key's range. */
static long long
conf_cores(void)
{
	long	n = sysconf(_SC_NPROCESSORS_ONLN);

	if (n < 1)
		return (1);
	return (n > CONF_THREADS_MAX ? CONF_THREADS_MAX : n);
}

/* Line of key name, 0 if it was not set. */
#define CONF_LINE(seen, name)	((seen)[conf_find(name) - conf_keys])

/*
 * The Management API keys: domain, client id and secret file go together;
 * the base URL is https://, or http:// to a loopback address only; the
 * backfill start is a date.
 */
static int
conf_check_auth0(struct conf *c, const char *path, const int *seen,
    char **cause)
{
	if (conf_check_pair(path, seen, "auth0_domain", "auth0_client_id",
	    cause) != 0 || conf_check_pair(path, seen, "auth0_domain",
	    "auth0_client_secret_file", cause) != 0)
		return (-1);
	if (c->auth0_domain != NULL && (strchr(c->auth0_domain, '/') != NULL ||
	    strchr(c->auth0_domain, ' ') != NULL)) {
		xasprintf(cause, "%s:%d: auth0_domain: expected a host name "
		    "like tenant.eu.auth0.com: %s", path,
		    CONF_LINE(seen, "auth0_domain"), c->auth0_domain);
		return (-1);
	}
	if (c->auth0_base_url != NULL && !conf_base_url_ok(c->auth0_base_url)) {
		xasprintf(cause, "%s:%d: auth0_base_url: expected https://host "
		    "(http:// only to 127.0.0.1, [::1] or localhost): %s", path,
		    CONF_LINE(seen, "auth0_base_url"), c->auth0_base_url);
		return (-1);
	}
	if (c->backfill_since != NULL &&
	    conf_parse_date(c->backfill_since, &c->backfill_since_t) != 0) {
		xasprintf(cause, "%s:%d: backfill_since: expected a date like "
		    "2026-01-31 or 2026-01-31T12:00:00Z: %s", path,
		    CONF_LINE(seen, "backfill_since"), c->backfill_since);
		return (-1);
	}
	c->on_conflict_remove = strcmp(c->on_conflict, "remove") == 0;
	if ((!c->on_conflict_remove && strcmp(c->on_conflict, "report") != 0) ||
	    (c->on_conflict_remove && c->auth0_domain == NULL)) {
		xasprintf(cause, "%s:%d: on_conflict: expected report, or "
		    "remove with auth0_domain set: %s", path,
		    CONF_LINE(seen, "on_conflict"), c->on_conflict);
		return (-1);
	}
	return (0);
}

/*
 * The replication keys: repl_local and at least one repl_peer go together,
 * no peer is the local site, and the acknowledgement policy is one that
 * repmgr knows.
 */
static int
conf_check_repl(struct conf *c, const char *path, const int *seen,
    char **cause)
{
	static const char	*policies[] = { "quorum", "all", "one" };
	static const char	*durabilities[] = { "disk", "memory" };
	size_t			 i;

	if (c->repl_local == NULL && c->repl_npeers == 0)
		return (0);
	if (c->repl_local == NULL) {
		xasprintf(cause, "%s:%d: repl_peer is set but repl_local is "
		    "not: set both or neither", path, c->repl_peers[0].line);
		return (-1);
	}
	if (c->repl_npeers == 0) {
		xasprintf(cause, "%s:%d: repl_local is set but no repl_peer "
		    "is: a replication group needs its other members", path,
		    CONF_LINE(seen, "repl_local"));
		return (-1);
	}
	for (i = 0; i < c->repl_npeers; i++) {
		if (strcmp(c->repl_peers[i].repl, c->repl_local) == 0 ||
		    strcmp(c->repl_peers[i].api, c->listen) == 0) {
			xasprintf(cause, "%s:%d: repl_peer: %s is this node "
			    "(repl_local or listen)", path,
			    c->repl_peers[i].line, c->repl_peers[i].repl);
			return (-1);
		}
	}
	if (conf_lookup_name(policies, 3, c->repl_ack_policy) == -1) {
		xasprintf(cause, "%s:%d: repl_ack_policy: expected quorum, all "
		    "or one: %s", path, CONF_LINE(seen, "repl_ack_policy"),
		    c->repl_ack_policy);
		return (-1);
	}
	if (conf_lookup_name(durabilities, 2, c->repl_ack_durability) == -1) {
		xasprintf(cause, "%s:%d: repl_ack_durability: expected disk or "
		    "memory: %s", path, CONF_LINE(seen, "repl_ack_durability"),
		    c->repl_ack_durability);
		return (-1);
	}
	return (0);
}

/* Return 1 for https://host[:port][/path] or http:// to loopback. */
static int
conf_base_url_ok(const char *url)
{
	static const char	*loop[] = { "127.0.0.1", "[::1]", "localhost" };
	const char		*host;
	size_t			 i, n;

	if (strncmp(url, "https://", 8) == 0)
		return (url[8] != '\0' && url[8] != '/');
	if (strncmp(url, "http://", 7) != 0)
		return (0);
	host = url + 7;
	for (i = 0; i < 3; i++) {
		n = strlen(loop[i]);
		if (strncmp(host, loop[i], n) == 0 && (host[n] == '\0' ||
		    host[n] == ':' || host[n] == '/'))
			return (1);
	}
	return (0);
}

/* Parse YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ (UTC) into seconds. */
static int
conf_parse_date(const char *s, int64_t *out)
{
	struct tm	 tm;
	const char	*end;

	memset(&tm, 0, sizeof tm);
	if ((end = strptime(s, "%Y-%m-%d", &tm)) == NULL)
		return (-1);
	if (*end == 'T' && (end = strptime(end + 1, "%H:%M:%S", &tm)) != NULL &&
	    *end == 'Z')
		end++;
	if (end == NULL || *end != '\0' || strlen(s) < 10)
		return (-1);
	*out = (int64_t)timegm(&tm);
	return (0);
}

/* Keys that go together: both set or neither, else name the missing one. */
static int
conf_check_pair(const char *path, const int *seen, const char *a,
    const char *b, char **cause)
{
	int	la = seen[conf_find(a) - conf_keys];
	int	lb = seen[conf_find(b) - conf_keys];

	if ((la == 0) == (lb == 0))
		return (0);
	xasprintf(cause, "%s:%d: %s is set but %s is not: set both or neither",
	    path, la != 0 ? la : lb, la != 0 ? a : b, la != 0 ? b : a);
	return (-1);
}

/* Load the configuration file at path; NULL with *cause on error. */
struct conf *
conf_load(const char *path, char **cause)
{
	struct conf	*c;
	FILE		*f;
	char		 line[CONF_LINE_MAX], *why;
	int		 seen[CONF_NKEYS] = { 0 }, lineno = 0;
	size_t		 i;

	c = xcalloc(1, sizeof *c);
	c->path = xstrdup(path);
	for (i = 0; i < CONF_NKEYS; i++) {
		if (conf_keys[i].dflt != NULL &&
		    conf_set(c, &conf_keys[i], conf_keys[i].dflt, &why) != 0)
			fatalx("default of %s: %s", conf_keys[i].name, why);
	}
	if ((f = fopen(path, "r")) == NULL) {
		xasprintf(cause, "%s: %s", path, strerror(errno));
		conf_free(c);
		return (NULL);
	}
	while (fgets(line, sizeof line, f) != NULL) {
		lineno++;
		if (strchr(line, '\n') == NULL && !feof(f)) {
			xasprintf(cause, "%s:%d: line too long", path, lineno);
			goto fail;
		}
		if (conf_parse_line(c, line, lineno, seen, &why) != 0) {
			xasprintf(cause, "%s:%d: %s", path, lineno, why);
			free(why);
			goto fail;
		}
	}
	fclose(f);
	if (conf_finish(c, path, seen, cause) != 0) {
		conf_free(c);
		return (NULL);
	}
	return (c);
fail:
	fclose(f);
	conf_free(c);
	return (NULL);
}

/* Free a configuration. */
void
conf_free(struct conf *c)
{
	size_t	i;

	if (c == NULL)
		return;
	for (i = 0; i < CONF_NKEYS; i++) {
		switch (conf_keys[i].type) {
		case CONF_STRING:
		case CONF_PATH:
		case CONF_SECRET_PATH:
		case CONF_REGION:
		case CONF_ADDRESS:
			free(*(char **)((char *)c + conf_keys[i].offset));
			break;
		default:
			break;
		}
	}
	for (i = 0; i < c->repl_npeers; i++) {
		free(c->repl_peers[i].repl);
		free(c->repl_peers[i].api);
	}
	free(c->path);
	free(c);
}

/* Refuse a secret file that group or others may use, or that is no file. */
int
conf_check_private(const char *path, char **cause)
{
	struct stat	sb;

	if (stat(path, &sb) != 0) {
		xasprintf(cause, "%s: %s", path, strerror(errno));
		return (-1);
	}
	if (!S_ISREG(sb.st_mode)) {
		xasprintf(cause, "%s: not a regular file", path);
		return (-1);
	}
	if ((sb.st_mode & (S_IRWXG | S_IRWXO)) != 0) {
		xasprintf(cause, "%s: secret file must not be accessible by "
		    "group or others (mode %04o); chmod 600 it",
		    path, (unsigned)(sb.st_mode & 07777));
		return (-1);
	}
	return (0);
}

/*
 * Read at most size bytes of a private file into buf; *len says how many.
 * A file of size bytes or more is too long for any caller, so a result of
 * size bytes means "too long".
 */
int
conf_read_private(const char *path, void *buf, size_t size, size_t *len,
    char **cause)
{
	ssize_t	n;
	int	fd;

	*len = 0;
	if (conf_check_private(path, cause) != 0)
		return (-1);
	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) == -1) {
		xasprintf(cause, "%s: %s", path, strerror(errno));
		return (-1);
	}
	while (*len < size &&
	    (n = read(fd, (char *)buf + *len, size - *len)) != 0) {
		if (n == -1) {
			if (errno == EINTR)
				continue;
			xasprintf(cause, "%s: %s", path, strerror(errno));
			close(fd);
			explicit_bzero(buf, size);
			return (-1);
		}
		*len += (size_t)n;
	}
	close(fd);
	return (0);
}

/*
 * Read a secret (a token) from a private file.  One trailing newline (LF or
 * CRLF) is dropped; an empty secret or one with control characters is
 * refused.  The secret itself never appears in a message.
 */
int
conf_read_secret(const char *path, char **out, size_t *outlen, char **cause)
{
	char	 buf[SECRET_MAX + 1];
	size_t	 len, i;
	int	 rv = -1;

	if (conf_read_private(path, buf, sizeof buf, &len, cause) != 0)
		return (-1);
	if (len > SECRET_MAX) {
		xasprintf(cause, "%s: longer than %d bytes", path, SECRET_MAX);
		goto out;
	}
	if (len > 0 && buf[len - 1] == '\n')
		len--;
	if (len > 0 && buf[len - 1] == '\r')
		len--;
	for (i = 0; i < len; i++) {
		if ((unsigned char)buf[i] < 0x20 || buf[i] == 0x7f) {
			xasprintf(cause, "%s: contains a control character",
			    path);
			goto out;
		}
	}
	if (len == 0) {
		xasprintf(cause, "%s: empty", path);
		goto out;
	}
	*out = xmalloc(len + 1);
	memcpy(*out, buf, len);
	(*out)[len] = '\0';
	*outlen = len;
	rv = 0;
out:
	explicit_bzero(buf, sizeof buf);
	return (rv);
}
