/*
 * One Auth0 log event to claim operations: the event table of DESIGN
 * section 4.  The event is a parsed yajl tree (the item's "data", or the
 * bare event); the caller's transaction carries every change.
 */
#include "config.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <yajl/yajl_tree.h>

#include "log.h"
#include "phone.h"
#include "phoneclaimd.h"
#include "xmalloc.h"

#define EVENTS_TYPES_MAX	64	/* distinct ignored types counted */
#define EVENTS_PATH_MAX		1024
#define EVENTS_LINKED_MAX	8	/* secondary user ids of one link */
#define EVENTS_TOKEN_MAX	16384	/* a link_with token, bytes */

enum events_number {
	EVENTS_NUMBER_NONE,
	EVENTS_NUMBER_FULL,
	EVENTS_NUMBER_MASKED,
	EVENTS_NUMBER_UNREADABLE	/* there, but unknown: as NONE */
};

/* An event turned into what the claim functions need. */
struct events_ctx {
	yajl_val		 data;
	struct claims_event	 ev;
	char			 user[USER_ID_MAX + 1];
	unsigned char		 numkey[NUMKEY_LEN];
	char			 e164[PHONE_E164_SIZE];
	char			 suffix[LAST4_LEN + 1];
	char			 enrol[ENROL_ID_MAX + 1];
	const char		*why;	/* a number is unreadable */
	struct events_info	*info;	/* what the caller learns */
};

static yajl_val		 events_get(yajl_val, const char *, const char *,
			     const char *);
static const char	*events_string(yajl_val, const char *, const char *,
			     const char *);
static int		 events_set_user(struct events_ctx *, const char *);
static int		 events_phone_factor(yajl_val);
static int		 events_number(struct events_ctx *, yajl_val);
static int		 events_number_string(struct events_ctx *,
			     const char *);
static int		 events_gd_number(struct events_ctx *, const char *,
			     int *);
static void		 events_enrol_id(struct events_ctx *, const char *);
static void		 events_note_unreadable(struct events_ctx *, int, int);
static int		 events_gd(struct store_txn *, struct events_ctx *,
			     const char *, int *);
static int		 events_sapi(struct store_txn *, struct events_ctx *,
			     int *);
static int		 events_sapi_path(char *, char **, char **, char **);
static int		 events_sapi_methods(struct store_txn *,
			     struct events_ctx *, const char *, const char *,
			     int *);
static int		 events_sapi_add(struct store_txn *,
			     struct events_ctx *, yajl_val, int *);
static int		 events_url_decode(char *);
static int		 events_sapi_link(struct store_txn *,
			     struct events_ctx *, int *);
static size_t		 events_linked_ids(struct events_ctx *,
			     char [][USER_ID_MAX + 1]);
static void		 events_linked_add(char [][USER_ID_MAX + 1], size_t *,
			     const char *, const char *);
static int		 events_jwt_sub(const char *, char *, size_t);
static int		 events_digits(const char **, int, int, int, int *);
static int		 events_not_utf8(yajl_val, const char *, const char *,
			     const char *);

static char		*events_ignored_name[EVENTS_TYPES_MAX];
static size_t		 events_ignored_n[EVENTS_TYPES_MAX];
static size_t		 events_ignored_used;
static uint64_t		 events_undated;
static uint64_t		 events_unreadable_n;

/* Look up up to three nested keys in an object (NULL ends the path). */
static yajl_val
events_get(yajl_val v, const char *a, const char *b, const char *c)
{
	const char	*path[4] = { a, b, c, NULL };

	if (v == NULL || !YAJL_IS_OBJECT(v))
		return (NULL);
	return (yajl_tree_get(v, path, yajl_t_any));
}

/* A nested member that is a string, or NULL. */
static const char *
events_string(yajl_val v, const char *a, const char *b, const char *c)
{
	yajl_val	s = events_get(v, a, b, c);

	return (s != NULL && YAJL_IS_STRING(s) ? YAJL_GET_STRING(s) : NULL);
}

/* Return the event's type, or NULL. */
const char *
events_type(yajl_val data)
{
	return (events_string(data, "type", NULL, NULL));
}

/*
 * Return the event's date in milliseconds since the epoch, from its
 * RFC 3339 "date" ("2026-11-27T10:30:00.123Z"); dflt_ms if it has none
 * that can be read.
 */
int64_t
events_date(yajl_val data, int64_t dflt_ms)
{
	return (events_iso_ms(events_string(data, "date", NULL, NULL),
	    dflt_ms));
}

/* Read n digits at *pp into *v, within [min, max]; advance *pp. */
static int
events_digits(const char **pp, int n, int min, int max, int *v)
{
	const char	*p = *pp;

	for (*v = 0; n > 0; n--, p++) {
		if (!isdigit((unsigned char)*p))
			return (-1);
		*v = *v * 10 + (*p - '0');
	}
	*pp = p;
	return (*v < min || *v > max ? -1 : 0);
}

/*
 * An RFC 3339 date-time in milliseconds since the epoch: "T", "t" or a
 * space between date and time, any number of fraction digits (cut to
 * milliseconds), "Z", "z" or an offset, not before 1970.  0, or -1 if s is
 * not one.
 */
int
events_rfc3339(const char *s, int64_t *ms)
{
	struct tm	 tm;
	int		 y, mo, d, h, mi, sec, oh = 0, om = 0, sign = 0;
	int		 digits, frac = 0;
	time_t		 t;

	if (s == NULL || events_digits(&s, 4, 0, 9999, &y) != 0 ||
	    *s++ != '-' || events_digits(&s, 2, 1, 12, &mo) != 0 ||
	    *s++ != '-' || events_digits(&s, 2, 1, 31, &d) != 0)
		return (-1);
	if (*s != 'T' && *s != 't' && *s != ' ')
		return (-1);
	s++;
	if (events_digits(&s, 2, 0, 23, &h) != 0 || *s++ != ':' ||
	    events_digits(&s, 2, 0, 59, &mi) != 0 || *s++ != ':' ||
	    events_digits(&s, 2, 0, 60, &sec) != 0)
		return (-1);
	if (*s == '.') {
		for (s++, digits = 0; isdigit((unsigned char)*s); s++) {
			if (digits++ < 3)
				frac = frac * 10 + (*s - '0');
		}
		if (digits == 0)
			return (-1);
		for (; digits < 3; digits++)
			frac *= 10;
	}
	if (*s == 'Z' || *s == 'z')
		s++;
	else if (*s == '+' || *s == '-') {
		sign = *s++ == '+' ? 1 : -1;
		if (events_digits(&s, 2, 0, 23, &oh) != 0 || *s++ != ':' ||
		    events_digits(&s, 2, 0, 59, &om) != 0)
			return (-1);
	} else
		return (-1);
	if (*s != '\0')
		return (-1);
	memset(&tm, 0, sizeof tm);
	tm.tm_year = y - 1900;
	tm.tm_mon = mo - 1;
	tm.tm_mday = d;
	tm.tm_hour = h;
	tm.tm_min = mi;
	tm.tm_sec = sec == 60 ? 59 : sec;	/* a leap second */
	if ((t = timegm(&tm)) == (time_t)-1 || tm.tm_mday != d)
		return (-1);
	t -= sign * (oh * 3600 + om * 60);
	/*
	 * No Auth0 log is dated before 1970, and the store keeps dates as
	 * milliseconds since then: an earlier date is not one (a claim
	 * dated by it was refused, and failed its whole batch).
	 */
	if (t < 0)
		return (-1);
	*ms = (int64_t)t * 1000 + (sec == 60 ? 999 : frac);
	return (0);
}

/* An RFC 3339 date-time in milliseconds since the epoch; else dflt_ms. */
int64_t
events_iso_ms(const char *s, int64_t dflt_ms)
{
	int64_t	ms;

	return (events_rfc3339(s, &ms) == 0 ? ms : dflt_ms);
}

/*
 * Count the n events of one request whose date cannot be read, and log
 * them in one line: each is dated at its arrival, so it may release but
 * never create or activate a claim where a release left a watermark.
 */
void
events_count_undated(const char *source, size_t n, const char *first)
{
	char	id[DEADLETTER_LOG_SIZE];

	if (n == 0)
		return;
	events_undated += n;
	log_warnx("%s: %zu event%s no date that can be read (the first: "
	    "log event %s): dated at arrival, so none can bring back a "
	    "released claim", source, n, n == 1 ? " has" : "s have",
	    first != NULL ? deadletter_log_value(first, id) : "(no id)");
}

/* How many events had no readable date since start. */
uint64_t
events_undated_total(void)
{
	return (events_undated);
}

/* Count an event type that changed nothing, for metrics and status. */
void
events_count_ignored(const char *type)
{
	size_t	i;

	for (i = 0; i < events_ignored_used; i++) {
		if (strcmp(events_ignored_name[i], type) == 0) {
			events_ignored_n[i]++;
			return;
		}
	}
	if (events_ignored_used == EVENTS_TYPES_MAX - 1)
		type = "(other)";
	if (events_ignored_used < EVENTS_TYPES_MAX) {
		events_ignored_name[events_ignored_used] = xstrndup(type, 64);
		events_ignored_n[events_ignored_used++] = 1;
	} else
		events_ignored_n[EVENTS_TYPES_MAX - 1]++;
}

/* Hand out the ignored types and their counts. */
size_t
events_ignored_types(const char ***names, const size_t **counts)
{
	*names = (const char **)events_ignored_name;
	*counts = events_ignored_n;
	return (events_ignored_used);
}

/* Forget the ignored-type counts. */
void
events_free(void)
{
	size_t	i;

	for (i = 0; i < events_ignored_used; i++)
		free(events_ignored_name[i]);
	events_ignored_used = 0;
}

/* Take the user id the event is about; 0 if it has none usable. */
static int
events_set_user(struct events_ctx *x, const char *user)
{
	if (user == NULL || !claims_user_id_ok(user))
		return (0);
	snprintf(x->user, sizeof x->user, "%s", user);
	x->ev.user_id = x->user;
	return (1);
}

/*
 * Is the event's factor a phone?  1 for phone, sms or voice (or no type
 * and a description ending "(sms)" or "(voice)"), 0 for another type or a
 * description naming another factor ("(otp)"), -1 when nothing says.
 */
static int
events_phone_factor(yajl_val data)
{
	const char	*type, *desc, *open;
	size_t		 len;

	type = events_string(data, "details", "authenticator", "type");
	if (type != NULL)
		return (strcmp(type, "phone") == 0 || strcmp(type, "sms") == 0 ||
		    strcmp(type, "voice") == 0);
	desc = events_string(data, "description", NULL, NULL);
	if (desc == NULL || (len = strlen(desc)) == 0 || desc[len - 1] != ')' ||
	    (open = strrchr(desc, '(')) == NULL)
		return (-1);
	return (strcmp(open, "(sms)") == 0 || strcmp(open, "(voice)") == 0);
}

/*
 * Read a phone number: a string with '+' and digits (full), one with '*',
 * 'X' or 'x' (masked: its trailing digits identify it), or a JSON number
 * (the digits of an E.164 number without '+').  A number that is there
 * but cannot be read is unreadable, with the reason in x->why (issue 17):
 * the stream's PII obfuscation masks it with no digit left or replaces it
 * with a hash, or it has no country code.
 */
static int
events_number(struct events_ctx *x, yajl_val v)
{
	char	buf[32];

	if (v == NULL || YAJL_IS_NULL(v))
		return (EVENTS_NUMBER_NONE);
	if (YAJL_IS_STRING(v))
		return (events_number_string(x, YAJL_GET_STRING(v)));
	x->why = "a JSON number that is no E.164 number";
	if (!YAJL_IS_INTEGER(v)) {
		if (!YAJL_IS_NUMBER(v))
			x->why = "neither a string nor a number";
		return (EVENTS_NUMBER_UNREADABLE);
	}
	if (YAJL_GET_INTEGER(v) <= 0)
		return (EVENTS_NUMBER_UNREADABLE);
	snprintf(buf, sizeof buf, "+%lld", YAJL_GET_INTEGER(v));
	return (events_number_string(x, buf));
}

/* Read a phone number given as a string (see events_number). */
static int
events_number_string(struct events_ctx *x, const char *s)
{
	size_t	len = strlen(s), hex;

	if (len == 0)
		return (EVENTS_NUMBER_NONE);
	if (len <= PHONE_INPUT_MAX && events_masked(s, x->suffix)) {
		if (x->suffix[0] != '\0') {
			x->ev.suffix = x->suffix;
			return (EVENTS_NUMBER_MASKED);
		}
		x->why = "masked with no digit left";
		return (EVENTS_NUMBER_UNREADABLE);
	}
	if (len <= PHONE_INPUT_MAX &&
	    phone_normalise(s, len, NULL, x->e164) == 0) {
		hash_number(x->e164, x->numkey);
		x->ev.numkey = x->numkey;
		x->ev.last4 = x->e164 + strlen(x->e164) - LAST4_LEN;
		return (EVENTS_NUMBER_FULL);
	}
	hex = strspn(s, "0123456789abcdefABCDEF");
	if (hex == len && strspn(s, "0123456789") < len)
		x->why = "hashed (the stream's PII obfuscation)";
	else if (s[strspn(s, " ")] != '+')
		x->why = "no country code ('+')";
	else
		x->why = "not a possible phone number";
	return (EVENTS_NUMBER_UNREADABLE);
}

/*
 * Is s a masked number ('*', 'X' or 'x' in it)?  If so, put its visible
 * trailing digits (the last LAST4_LEN at most, maybe none) in suffix.
 */
int
events_masked(const char *s, char *suffix)
{
	const char	*p;
	size_t		 len = strlen(s), n;

	if (strpbrk(s, "*Xx") == NULL)
		return (0);
	for (p = s + len, n = 0; p > s && isdigit((unsigned char)p[-1]); p--)
		n++;
	if (n > LAST4_LEN)
		n = LAST4_LEN;
	memcpy(suffix, s + len - n, n);
	suffix[n] = '\0';
	return (1);
}

/* An enrolment id without its "phone|", "sms|" or "voice|" prefix. */
const char *
events_method_id(const char *id)
{
	static const char	*prefixes[] = { "phone|", "sms|", "voice|" };
	size_t			 i;

	for (i = 0; i < sizeof prefixes / sizeof prefixes[0]; i++) {
		if (strncmp(id, prefixes[i], strlen(prefixes[i])) == 0)
			return (id + strlen(prefixes[i]));
	}
	return (id);
}

/* Keep an event's enrolment id, without its prefix. */
static void
events_enrol_id(struct events_ctx *x, const char *id)
{
	if (id == NULL || *id == '\0')
		return;
	snprintf(x->enrol, sizeof x->enrol, "%s", events_method_id(id));
	x->ev.enrol_id = x->enrol;
}

/*
 * Read the number of a gd_enrollment_complete or gd_unenroll into x and
 * tell whether the event is about a phone factor: 1 yes, 0 no (ignore
 * it), -1 nothing says (no type, no telling description, no number).
 * A number, even one that cannot be read, shows a phone factor.
 */
static int
events_gd_number(struct events_ctx *x, const char *type, int *kind)
{
	yajl_val	num;
	int		factor;

	if (strcmp(type, "gd_start_enroll_failed") == 0) {
		*kind = EVENTS_NUMBER_NONE;
		return (events_phone_factor(x->data));
	}
	num = events_get(x->data, "details", "authenticator", "phone_number");
	if (num == NULL || YAJL_IS_NULL(num))
		num = events_get(x->data, "details", "enrollment",
		    "phone_number");
	factor = events_phone_factor(x->data);
	*kind = events_number(x, num);
	if (factor == -1 && *kind != EVENTS_NUMBER_NONE)
		factor = 1;
	/* An enrolment must show a phone factor. */
	if (factor == -1 && strcmp(type, "gd_enrollment_complete") == 0)
		factor = 0;
	return (factor);
}

/* The gd_* events: enrolment complete, unenrol, failures. */
static int
events_gd(struct store_txn *txn, struct events_ctx *x, const char *type,
    int *outcome)
{
	int	factor, kind;

	if (!events_set_user(x, events_string(x->data, "details",
	    "enrollment", "user_id")) &&
	    !events_set_user(x, events_string(x->data, "user_id", NULL, NULL))) {
		*outcome = CLAIMS_UNMATCHED;
		return (STORE_OK);
	}
	if (strcmp(type, "gd_send_sms_failure") == 0 ||
	    strcmp(type, "gd_send_voice_failure") == 0)
		return (claims_ev_failed(txn, &x->ev, outcome));
	factor = events_gd_number(x, type, &kind);
	events_note_unreadable(x, factor, kind);
	/* Auth0 documents it as a push failure: a phone must show. */
	if (strcmp(type, "gd_start_enroll_failed") == 0 && factor == 1)
		return (claims_ev_failed(txn, &x->ev, outcome));
	if (factor == 0 || strcmp(type, "gd_start_enroll_failed") == 0) {
		*outcome = CLAIMS_IGNORED;
		return (STORE_OK);
	}
	/*
	 * An unenrolment that does not show its factor may be a TOTP or
	 * push one: it releases only the claim that carries its id.
	 */
	x->ev.id_only = factor == -1;
	/* An unreadable number is unknown: as if there were none. */
	events_enrol_id(x, events_string(x->data, "details", "authenticator",
	    "id"));
	if (x->ev.enrol_id == NULL)
		events_enrol_id(x, events_string(x->data, "details",
		    "enrollment", "_id"));
	if (strcmp(type, "gd_enrollment_complete") == 0)
		return (claims_ev_enrolled(txn, &x->ev, outcome));
	return (claims_ev_unenrolled(txn, &x->ev, outcome));
}

/*
 * Tell the caller of events_apply_info that the number of a phone
 * factor's event cannot be read, with the user as events_unreadable names
 * it: the same reading, without a second one.
 */
static void
events_note_unreadable(struct events_ctx *x, int factor, int kind)
{
	const char	*user;

	if (x->info == NULL || factor == 0 || kind != EVENTS_NUMBER_UNREADABLE)
		return;
	x->info->unreadable = x->why;
	user = events_string(x->data, "details", "enrollment", "user_id");
	if (user == NULL || !claims_user_id_ok(user))
		user = events_string(x->data, "user_id", NULL, NULL);
	x->info->user = user;
}

/*
 * Why the phone number of an event cannot be read, or NULL if it can (or
 * the event is not about a phone factor's number): the same reading as
 * events_apply.  *user is the event's user.
 */
const char *
events_unreadable(yajl_val data, const char **user)
{
	struct events_ctx	*x;
	const char		*type = events_type(data), *why = NULL;
	int			 kind;

	*user = NULL;
	if (type == NULL || (strcmp(type, "gd_enrollment_complete") != 0 &&
	    strcmp(type, "gd_unenroll") != 0))
		return (NULL);
	x = xcalloc(1, sizeof *x);
	x->data = data;
	if ((events_set_user(x, events_string(data, "details", "enrollment",
	    "user_id")) || events_set_user(x, events_string(data, "user_id",
	    NULL, NULL))) && events_gd_number(x, type, &kind) != 0 &&
	    kind == EVENTS_NUMBER_UNREADABLE) {
		why = x->why;
		*user = events_string(data, "details", "enrollment", "user_id");
		if (*user == NULL || !claims_user_id_ok(*user))
			*user = events_string(data, "user_id", NULL, NULL);
	}
	free(x);
	return (why);
}

/*
 * Count and log an event whose phone number cannot be read (the reason,
 * never the value): it was handled as one with no number.
 */
void
events_count_unreadable(const char *log_id, const char *user,
    const char *why)
{
	char	id[DEADLETTER_LOG_SIZE], who[DEADLETTER_LOG_SIZE];

	events_unreadable_n++;
	log_warnx("log event %s of user %s: phone number unreadable, %s; "
	    "matched as an event without a number",
	    log_id != NULL ? deadletter_log_value(log_id, id) : "(no id)",
	    user != NULL ? deadletter_log_value(user, who) : "(none)", why);
}

/* How many events had a phone number that could not be read. */
uint64_t
events_unreadable_total(void)
{
	return (events_unreadable_n);
}

/* Decode %XX escapes in place; -1 on a bad escape or a NUL. */
static int
events_url_decode(char *s)
{
	char	*w = s, hex[3] = { 0, 0, 0 };

	for (; *s != '\0'; s++) {
		if (*s != '%') {
			*w++ = *s;
			continue;
		}
		if (!isxdigit((unsigned char)s[1]) ||
		    !isxdigit((unsigned char)s[2]))
			return (-1);
		hex[0] = s[1];
		hex[1] = s[2];
		if ((*w++ = (char)strtol(hex, NULL, 16)) == '\0')
			return (-1);
		s += 2;
	}
	*w = '\0';
	return (0);
}

/*
 * Split a Management API path into its parts: /api/v2/<a>/<b>/<c>/<d>.
 * Returns how many of users/{id}[/what[/mid]] or guardian/enrollments/{id}
 * matched: *kind is "users" or "guardian", *id, *what and *mid are
 * decoded segments (NULL when absent).
 */
static int
events_sapi_path(char *path, char **id, char **what, char **mid)
{
	char	*seg[6], *p, *q;
	int	 n = 0;

	*id = *what = *mid = NULL;
	if ((q = strchr(path, '?')) != NULL)
		*q = '\0';
	if (strncmp(path, "/api/v2/", 8) != 0)
		return (-1);
	for (p = path + 8; n < 6 && (q = strsep(&p, "/")) != NULL;) {
		if (*q == '\0' || events_url_decode(q) != 0)
			return (-1);
		seg[n++] = q;
	}
	if (p != NULL)
		return (-1);
	if (n >= 2 && n <= 4 && strcmp(seg[0], "users") == 0) {
		*id = seg[1];
		*what = n >= 3 ? seg[2] : NULL;
		*mid = n == 4 ? seg[3] : NULL;
		return (0);
	}
	if (n == 3 && strcmp(seg[0], "guardian") == 0 &&
	    strcmp(seg[1], "enrollments") == 0) {
		*mid = seg[2];
		return (1);
	}
	return (-1);
}

/* POST or PUT authentication-methods: claim each phone entry of the body. */
static int
events_sapi_add(struct store_txn *txn, struct events_ctx *x, yajl_val body,
    int *outcome)
{
	yajl_val	 m;
	size_t		 i, n = 1;
	int		 rv = STORE_OK, one = 0;

	*outcome = CLAIMS_IGNORED;
	if (body != NULL && YAJL_IS_ARRAY(body))
		n = body->u.array.len;
	for (i = 0; i < n && rv == STORE_OK; i++) {
		m = YAJL_IS_ARRAY(body) ? body->u.array.values[i] : body;
		if (m == NULL || !YAJL_IS_OBJECT(m))
			continue;
		if (events_string(m, "type", NULL, NULL) == NULL ||
		    strcmp(events_string(m, "type", NULL, NULL), "phone") != 0)
			continue;
		x->ev.numkey = NULL;
		if (events_number(x, events_get(m, "phone_number", NULL,
		    NULL)) != EVENTS_NUMBER_FULL) {
			*outcome = CLAIMS_UNMATCHED;
			rv = verify_ask(txn, x->ev.user_id, VERIFY_UNMATCHED,
			    x->ev.now);
			continue;
		}
		rv = claims_ev_enrolled(txn, &x->ev, &one);
		if (one == CLAIMS_APPLIED || *outcome == CLAIMS_IGNORED)
			*outcome = one;
	}
	return (rv);
}

/* Add provider|user (or user alone) to a list of secondary user ids. */
static void
events_linked_add(char ids[][USER_ID_MAX + 1], size_t *n,
    const char *provider, const char *user)
{
	char	id[USER_ID_MAX + 2];
	size_t	i;

	if (user == NULL || *user == '\0' || *n == EVENTS_LINKED_MAX)
		return;
	if (provider != NULL && (size_t)snprintf(id, sizeof id, "%s|%s",
	    provider, user) >= sizeof id)
		return;
	if (provider == NULL)
		snprintf(id, sizeof id, "%s", user);
	if (!claims_user_id_ok(id))
		return;
	for (i = 0; i < *n; i++) {
		if (strcmp(ids[i], id) == 0)
			return;
	}
	memcpy(ids[(*n)++], id, strlen(id) + 1);	/* checked: fits */
}

/*
 * The "sub" of a JWT (the secondary account's ID token of a link_with)
 * into sub; -1 if it has none that can be read.  Only read: Auth0 checked
 * the token before it answered the link 2xx.
 */
static int
events_jwt_sub(const char *token, char *sub, size_t size)
{
	static const char	 b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
	    "abcdefghijklmnopqrstuvwxyz0123456789-_";
	const char		*p, *end, *c;
	char			*json, *cause = NULL;
	size_t			 len = 0;
	unsigned int		 acc = 0, bits = 0;
	yajl_val		 root;
	const char		*s;
	int			 rv = -1;

	if (strlen(token) > EVENTS_TOKEN_MAX ||
	    (p = strchr(token, '.')) == NULL ||
	    (end = strchr(++p, '.')) == NULL)
		return (-1);
	json = xmalloc((size_t)(end - p) + 1);
	for (; p < end && *p != '='; p++) {
		if ((c = strchr(b64, *p)) == NULL || *p == '\0')
			goto out;
		acc = (acc << 6) | (unsigned int)(c - b64);
		if ((bits += 6) >= 8) {
			bits -= 8;
			json[len++] = (char)((acc >> bits) & 0xff);
		}
	}
	if ((root = json_parse(json, len, &cause)) == NULL) {
		free(cause);
		goto out;
	}
	if ((s = events_string(root, "sub", NULL, NULL)) != NULL &&
	    strlen(s) < size) {
		snprintf(sub, size, "%s", s);
		rv = 0;
	}
	json_free(root);
out:
	free(json);
	return (rv);
}

/*
 * The secondary user ids of an account link: from the request body
 * ({provider, user_id}, or a link_with token's sub), else, when the log
 * leaves the body out, the identities of the answer other than the
 * primary's own.
 */
static size_t
events_linked_ids(struct events_ctx *x, char ids[][USER_ID_MAX + 1])
{
	char		 sub[USER_ID_MAX + 1];
	const char	*provider, *user, *token;
	yajl_val	 body, list, v;
	size_t		 n = 0, i;

	body = events_get(x->data, "details", "request", "body");
	provider = events_string(body, "provider", NULL, NULL);
	user = events_string(body, "user_id", NULL, NULL);
	if (provider != NULL && user != NULL) {
		events_linked_add(ids, &n, provider, user);
		if (strchr(user, '|') != NULL)	/* given whole */
			events_linked_add(ids, &n, NULL, user);
	}
	token = events_string(body, "link_with", NULL, NULL);
	if (token != NULL && events_jwt_sub(token, sub, sizeof sub) == 0)
		events_linked_add(ids, &n, NULL, sub);
	if (n > 0)
		return (n);
	list = events_get(x->data, "details", "response", "body");
	for (i = 0; list != NULL && YAJL_IS_ARRAY(list) &&
	    i < list->u.array.len; i++) {
		v = list->u.array.values[i];
		provider = events_string(v, "provider", NULL, NULL);
		user = events_string(v, "user_id", NULL, NULL);
		if (provider == NULL || user == NULL ||
		    (strncmp(x->user, provider, strlen(provider)) == 0 &&
		    x->user[strlen(provider)] == '|' &&
		    strcmp(x->user + strlen(provider) + 1, user) == 0))
			continue;	/* the primary's own identity */
		events_linked_add(ids, &n, provider, user);
	}
	return (n);
}

/*
 * POST /api/v2/users/{id}/identities: account linking (Auth0 Management
 * API, "Link a User Account").  The secondary user leaves the user list
 * without an sdu: every claim of it is released, with a watermark, as a
 * deletion would; the primary is verified, as it may now hold them.
 */
static int
events_sapi_link(struct store_txn *txn, struct events_ctx *x, int *outcome)
{
	char	ids[EVENTS_LINKED_MAX][USER_ID_MAX + 1];
	char	primary[USER_ID_MAX + 1];
	size_t	n, i;
	int	rv = STORE_OK, one;

	*outcome = CLAIMS_IGNORED;
	snprintf(primary, sizeof primary, "%s", x->user);
	n = events_linked_ids(x, ids);
	for (i = 0; i < n && rv == STORE_OK; i++) {
		if (strcmp(ids[i], primary) == 0)
			continue;
		x->ev.user_id = ids[i];
		rv = claims_ev_release_user(txn, &x->ev, &one);
		if (one == CLAIMS_APPLIED || *outcome == CLAIMS_IGNORED)
			*outcome = one;
	}
	x->ev.user_id = x->user;
	if (rv == STORE_OK)
		rv = verify_ask(txn, primary, VERIFY_UNMATCHED, x->ev.now);
	return (rv);
}

/* Act on one Management API write by its method and path. */
static int
events_sapi_methods(struct store_txn *txn, struct events_ctx *x,
    const char *method, const char *path, int *outcome)
{
	char	*copy, *id, *what, *mid;
	int	 kind, rv = STORE_OK, one = 0;

	*outcome = CLAIMS_IGNORED;
	copy = xstrdup(path);
	kind = events_sapi_path(copy, &id, &what, &mid);
	if (kind == 1 && strcasecmp(method, "delete") == 0) {
		events_enrol_id(x, mid);
		rv = claims_ev_release_enrol(txn, &x->ev, outcome);
		goto out;
	}
	if (kind != 0 || !events_set_user(x, id))
		goto out;
	x->ev.source = CLAIM_SRC_ADMIN;
	if (strcasecmp(method, "delete") == 0 && mid == NULL && (what == NULL ||
	    strcmp(what, "authenticators") == 0 ||
	    strcmp(what, "authentication-methods") == 0))
		rv = claims_ev_release_user(txn, &x->ev, outcome);
	else if (strcasecmp(method, "delete") == 0 && what != NULL &&
	    strcmp(what, "authentication-methods") == 0) {
		/*
		 * "phone|dev_x" is a phone method; "totp|..." is not; a bare
		 * "dev_x" may be either: it releases only the claim that
		 * carries it, else the user is verified.
		 */
		if (strchr(mid, '|') != NULL && strncmp(mid, "phone|", 6) != 0 &&
		    strncmp(mid, "sms|", 4) != 0 && strncmp(mid, "voice|", 6) != 0)
			goto out;
		x->ev.id_only = strchr(mid, '|') == NULL;
		events_enrol_id(x, mid);
		rv = claims_ev_unenrolled(txn, &x->ev, outcome);
	} else if (what != NULL && mid == NULL &&
	    strcmp(what, "identities") == 0 && strcasecmp(method, "post") == 0)
		rv = events_sapi_link(txn, x, outcome);
	else if (what != NULL && mid == NULL &&
	    strcmp(what, "authentication-methods") == 0 &&
	    (strcasecmp(method, "post") == 0 || strcasecmp(method, "put") == 0)) {
		if (strcasecmp(method, "put") == 0) {
			rv = claims_ev_release_user(txn, &x->ev, &one);
			/* The new set is as new as its own release. */
			x->ev.when.tie_ok = 1;
		}
		if (rv == STORE_OK)
			rv = events_sapi_add(txn, x, events_get(x->data,
			    "details", "request", "body"), outcome);
		if (strcasecmp(method, "put") == 0 && one == CLAIMS_APPLIED &&
		    *outcome != CLAIMS_APPLIED)
			*outcome = CLAIMS_APPLIED;
	}
out:
	free(copy);
	return (rv);
}

/* sapi: a successful Management API write; the target is in the path. */
static int
events_sapi(struct store_txn *txn, struct events_ctx *x, int *outcome)
{
	const char	*method, *path;
	yajl_val	 code;

	*outcome = CLAIMS_IGNORED;
	code = events_get(x->data, "details", "response", "statusCode");
	if (code != NULL && !(YAJL_IS_INTEGER(code) &&
	    YAJL_GET_INTEGER(code) >= 200 && YAJL_GET_INTEGER(code) < 300))
		return (STORE_OK);
	method = events_string(x->data, "details", "request", "method");
	path = events_string(x->data, "details", "request", "path");
	if (method == NULL || path == NULL || strlen(path) > EVENTS_PATH_MAX)
		return (STORE_OK);
	return (events_sapi_methods(txn, x, method, path, outcome));
}

/*
 * Apply one event (the item's data) with its log id, arrived at now_ms.
 * *outcome is one of enum claims_outcome; the return value is a store
 * status.  An event without a readable date is dated at its arrival, as
 * undated (the caller counts it: events_count_undated).
 */
int
events_apply(struct store_txn *txn, yajl_val data, const char *log_id,
    int64_t now_ms, int *outcome)
{
	return (events_apply_info(txn, data, log_id, now_ms, outcome, NULL));
}

/*
 * events_apply, and fill info (if not NULL) with what was read on the
 * way: the date, and why a number cannot be read.  The log stream needs
 * them for every event; reading the tree again cost a second
 * normalisation and HMAC of the number.
 */
int
events_apply_info(struct store_txn *txn, yajl_val data, const char *log_id,
    int64_t now_ms, int *outcome, struct events_info *info)
{
	struct events_ctx	 x;
	const char		*type = events_type(data);
	int			 rv = STORE_OK;

	memset(&x, 0, sizeof x);
	x.data = data;
	x.info = info;
	x.ev.log_id = log_id;
	x.ev.now = now_ms / 1000;
	x.ev.when.kind = CLAIMS_DATED;
	if (events_rfc3339(events_string(data, "date", NULL, NULL),
	    &x.ev.when.ms) != 0) {
		x.ev.when.ms = now_ms;
		x.ev.when.kind = CLAIMS_UNDATED;
	}
	if (info != NULL) {
		memset(info, 0, sizeof *info);
		info->undated = x.ev.when.kind == CLAIMS_UNDATED;
		info->date_ms = info->undated ? 0 : x.ev.when.ms;
	}
	x.ev.source = CLAIM_SRC_LOGSTREAM;
	*outcome = CLAIMS_IGNORED;
	if (type == NULL)
		return (STORE_OK);
	if (strncmp(type, "gd_", 3) == 0 &&
	    (strcmp(type, "gd_enrollment_complete") == 0 ||
	    strcmp(type, "gd_unenroll") == 0 ||
	    strcmp(type, "gd_send_sms_failure") == 0 ||
	    strcmp(type, "gd_send_voice_failure") == 0 ||
	    strcmp(type, "gd_start_enroll_failed") == 0))
		rv = events_gd(txn, &x, type, outcome);
	else if (strcmp(type, "sdu") == 0 || strcmp(type, "du") == 0) {
		if (events_set_user(&x, events_string(data, "user_id", NULL,
		    NULL)))
			rv = claims_ev_release_user(txn, &x.ev, outcome);
		else
			*outcome = CLAIMS_UNMATCHED;
	} else if (strcmp(type, "sapi") == 0)
		rv = events_sapi(txn, &x, outcome);
	return (rv);
}

/* Return 1 if the string at a path is there but not UTF-8. */
static int
events_not_utf8(yajl_val data, const char *a, const char *b, const char *c)
{
	const char	*s = events_string(data, a, b, c);

	return (s != NULL && !json_utf8_ok(s, strlen(s)));
}

/*
 * Why an event cannot be taken, or NULL: an id that its type makes us
 * read and that is not Unicode ("\u0000" or a lone surrogate, kept by
 * json.c as bytes that are not UTF-8).  It would name nobody, so the item
 * is rejected (dead-lettered), never applied with a rewritten id.
 */
const char *
events_refusal(yajl_val data)
{
	const char	*type = events_type(data);

	if (type == NULL)
		return (NULL);
	if (strcmp(type, "sdu") == 0 || strcmp(type, "du") == 0 ||
	    strncmp(type, "gd_", 3) == 0) {
		if (events_not_utf8(data, "user_id", NULL, NULL) ||
		    events_not_utf8(data, "details", "enrollment", "user_id"))
			return ("invalid_user_id");
	}
	if (strncmp(type, "gd_", 3) == 0 &&
	    (events_not_utf8(data, "details", "authenticator", "id") ||
	    events_not_utf8(data, "details", "enrollment", "_id")))
		return ("invalid_enrollment_id");
	if (strcmp(type, "sapi") == 0 &&
	    events_not_utf8(data, "details", "request", "path"))
		return ("invalid_path");
	return (NULL);
}
