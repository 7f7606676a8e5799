/*
 * phoneclaimctl: the command-line client of the status socket (DESIGN
 * section 5).
 *
 * It sends one command line and prints the daemon's one-line JSON answer,
 * pretty when standard output is a terminal.  Two commands are its own:
 * import reads a CSV file of number,user_id lines and sends a claim for
 * each over one connection, a window of them in flight at a time; export
 * turns the daemon's stream of claims into CSV.  Neither ever prints a
 * full phone number.  backup sends the directory as an absolute path (the
 * daemon does not share our working directory) and waits for the end of
 * the backup however long it takes.
 *
 * Exit status: 0 an answer without "error", 1 an answer with one (or an
 * import line refused), 2 usage, no connection or no answer.
 */
#include "config.h"

#include <sys/types.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <yajl/yajl_gen.h>
#include <yajl/yajl_tree.h>

/* The daemon's default status_socket (conf.c). */
#define CTL_SOCKET_DEFAULT	"/run/phoneclaimd/status.sock"
#define CTL_SOCKET_ENV		"PHONECLAIMD_STATUS_SOCKET"

#define CTL_LINE_MAX		4096	/* the daemon's limit */
#define CTL_TIMEOUT_MS		60000	/* to wait for an answer */
#define CTL_WAIT_FOREVER	-1	/* for a backup's answer */
#define CTL_WINDOW		64	/* import claims in flight */

#define CTL_EXIT_OK		0
#define CTL_EXIT_ERROR		1
#define CTL_EXIT_FAIL		2

/* A connection and the bytes read from it that no line took yet. */
struct ctl_conn {
	int	 fd;
	int	 timeout_ms;	/* for each answer, or CTL_WAIT_FOREVER */
	char	*buf;
	size_t	 len;
	size_t	 size;
};

/* Why an import line was not claimed. */
struct ctl_line_note {
	unsigned long	 lineno;
	char		*text;
};

/* An import in progress: counts, the lines in flight, the refusals. */
struct ctl_import {
	unsigned long	 read;
	unsigned long	 claimed;
	unsigned long	 taken;
	unsigned long	 exempt;
	unsigned long	 refused;
	unsigned long	 inflight[CTL_WINDOW];
	size_t		 first;
	size_t		 n;
	struct ctl_line_note *notes;
	size_t		 nnotes;
	int		 stop;		/* forbidden, unavailable */
};

static void	ctl_usage(FILE *);
static void	ctl_fail(const char *, ...)
		    __attribute__((format(printf, 1, 2), noreturn));
static void	ctl_connect(struct ctl_conn *, const char *);
static void	ctl_send(struct ctl_conn *, const char *);
static char	*ctl_read_line(struct ctl_conn *);
static int	ctl_quote(char *, size_t, size_t *, const char *);
static int	ctl_build(char *, size_t, int, char **);
static yajl_val	ctl_parse(const char *);
static int	ctl_has(yajl_val, const char *);
static const char *ctl_str(yajl_val, const char *);
static void	ctl_gen_value(yajl_gen, yajl_val);
static void	ctl_print(const char *, yajl_val);
static int	ctl_command(struct ctl_conn *, int, char **);
static int	ctl_csv_split(char *, char **, int);
static void	ctl_trim(char **);
static void	ctl_note(struct ctl_import *, unsigned long, const char *,
		    const char *);
static int	ctl_note_cmp(const void *, const void *);
static void	ctl_import_report(struct ctl_import *, unsigned long);
static int	ctl_import_line(struct ctl_conn *, struct ctl_import *, char *,
		    unsigned long, int *);
static void	ctl_import_answer(struct ctl_conn *, struct ctl_import *);
static int	ctl_import(struct ctl_conn *, const char *);
static void	ctl_csv_write(const char *);
static int	ctl_export_row(yajl_val, unsigned long *);
static int	ctl_export(struct ctl_conn *);
static int	ctl_backup(struct ctl_conn *, const char *);

/* Print usage to f. */
static void
ctl_usage(FILE *f)
{
	fprintf(f, "usage: phoneclaimctl [-h] [-s socket] command [args]\n"
	    "\n"
	    "  -s socket  status socket (default: $%s, else %s)\n"
	    "  -h         this help\n"
	    "\n"
	    "commands:\n"
	    "  status                        the daemon, its claims, "
	    "the log stream, the store\n"
	    "  lookup <number>               who holds a number\n"
	    "  user <user_id>                the numbers a user holds\n"
	    "  conflicts                     numbers used by more users "
	    "than allowed\n"
	    "  release <number> [<user_id>]  free a number, of one user or "
	    "of all (*)\n"
	    "  claim <number> <user_id>      assign a number to a user (*)\n"
	    "  import FILE                   claim each number,user_id line "
	    "of a CSV file\n"
	    "                                (- for standard input) (*)\n"
	    "  export                        every claim as CSV: "
	    "user_id,last4,state,since\n"
	    "  backfill                      read missed events from Auth0 "
	    "now (*)\n"
	    "  reconcile [<user_id>]         check every active claim (or one "
	    "user's)\n"
	    "                                against Auth0 now (*)\n"
	    "  backup DIR                    a hot backup of the store and the "
	    "hash key into\n"
	    "                                DIR, new or empty (*)\n"
	    "  help                          the daemon's list of commands\n"
	    "\n"
	    "(*) for root or the daemon's user only.  Numbers are shown by "
	    "their last\n"
	    "digits only.  Exit status: 0 success, 1 the daemon answered an "
	    "error or an\n"
	    "import line was refused, 2 usage error or no answer.\n",
	    CTL_SOCKET_ENV, CTL_SOCKET_DEFAULT);
}

/* Print a message and exit 2. */
static void
ctl_fail(const char *fmt, ...)
{
	va_list	ap;

	fputs("phoneclaimctl: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(CTL_EXIT_FAIL);
}

/* Connect to the status socket at path. */
static void
ctl_connect(struct ctl_conn *conn, const char *path)
{
	struct sockaddr_un	sun;

	memset(conn, 0, sizeof *conn);
	conn->timeout_ms = CTL_TIMEOUT_MS;
	memset(&sun, 0, sizeof sun);
	sun.sun_family = AF_UNIX;
	if ((size_t)snprintf(sun.sun_path, sizeof sun.sun_path, "%s", path) >=
	    sizeof sun.sun_path)
		ctl_fail("%s: socket path too long", path);
	if ((conn->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) == -1)
		ctl_fail("socket: %s", strerror(errno));
	if (connect(conn->fd, (struct sockaddr *)&sun, sizeof sun) != 0)
		ctl_fail("cannot connect to %s: %s (is phoneclaimd running?)",
		    path, strerror(errno));
}

/* Send one line (a newline is added). */
static void
ctl_send(struct ctl_conn *conn, const char *line)
{
	size_t	len = strlen(line), off = 0;
	ssize_t	n;

	while (off <= len) {
		if (off == len)
			n = send(conn->fd, "\n", 1, MSG_NOSIGNAL);
		else
			n = send(conn->fd, line + off, len - off, MSG_NOSIGNAL);
		if (n == -1 && errno == EINTR)
			continue;
		if (n <= 0)
			ctl_fail("cannot send to the daemon: %s",
			    n == 0 ? "nothing sent" : strerror(errno));
		off += (size_t)n;
	}
}

/*
 * Read one line of answer (without its newline, allocated).  The daemon
 * closing the connection or staying silent for the connection's timeout is
 * fatal.
 */
static char *
ctl_read_line(struct ctl_conn *conn)
{
	struct pollfd	 pfd = { conn->fd, POLLIN, 0 };
	char		*nl, *line;
	size_t		 len;
	ssize_t		 n;

	while (conn->len == 0 ||
	    (nl = memchr(conn->buf, '\n', conn->len)) == NULL) {
		if (conn->size - conn->len < 4096) {
			conn->size = conn->size * 2 + 65536;
			conn->buf = realloc(conn->buf, conn->size);
			if (conn->buf == NULL)
				ctl_fail("out of memory");
		}
		if ((n = poll(&pfd, 1, conn->timeout_ms)) == 0)
			ctl_fail("no answer from the daemon within %d s",
			    conn->timeout_ms / 1000);
		if (n > 0)
			n = recv(conn->fd, conn->buf + conn->len,
			    conn->size - conn->len, 0);
		if (n == -1 && errno == EINTR)
			continue;
		if (n <= 0)
			ctl_fail("the daemon closed the connection%s%s",
			    n == 0 ? "" : ": ", n == 0 ? "" : strerror(errno));
		conn->len += (size_t)n;
	}
	len = (size_t)(nl - conn->buf);
	if ((line = malloc(len + 1)) == NULL)
		ctl_fail("out of memory");
	memcpy(line, conn->buf, len);
	line[len] = '\0';
	conn->len -= len + 1;
	memmove(conn->buf, nl + 1, conn->len);
	return (line);
}

/*
 * Append one argument to the command at out + *off, in double quotes if it
 * holds blanks, quotes or backslashes or is empty.  -1 if it holds a
 * control character or does not fit.
 */
static int
ctl_quote(char *out, size_t size, size_t *off, const char *arg)
{
	const char	*p;
	int		 quote;

	quote = *arg == '\0' || strpbrk(arg, " \t\"\\") != NULL;
	/* Room for a blank, two quotes and the NUL; then two per byte. */
	if (*off + 4 >= size)
		return (-1);
	if (*off > 0)
		out[(*off)++] = ' ';
	if (quote)
		out[(*off)++] = '"';
	for (p = arg; *p != '\0'; p++) {
		if ((unsigned char)*p < 0x20 || *p == 0x7f || *off + 4 >= size)
			return (-1);
		if (quote && (*p == '"' || *p == '\\'))
			out[(*off)++] = '\\';
		out[(*off)++] = *p;
	}
	if (quote)
		out[(*off)++] = '"';
	out[*off] = '\0';
	return (0);
}

/* Build a command line from words; -1 if one cannot be sent. */
static int
ctl_build(char *out, size_t size, int argc, char **argv)
{
	size_t	off = 0;
	int	i;

	out[0] = '\0';
	for (i = 0; i < argc; i++) {
		if (ctl_quote(out, size, &off, argv[i]) != 0)
			return (-1);
	}
	return (0);
}

/* Parse an answer line: a JSON object, or exit 2. */
static yajl_val
ctl_parse(const char *line)
{
	yajl_val	v;
	char		err[256];

	v = yajl_tree_parse(line, err, sizeof err);
	if (v == NULL || !YAJL_IS_OBJECT(v))
		ctl_fail("unreadable answer from the daemon");
	return (v);
}

/* Return 1 if an object has the member key. */
static int
ctl_has(yajl_val v, const char *key)
{
	const char	*path[2] = { key, NULL };

	return (yajl_tree_get(v, path, yajl_t_any) != NULL);
}

/* Return a string member of an object, or NULL. */
static const char *
ctl_str(yajl_val v, const char *key)
{
	const char	*path[2] = { key, NULL };

	return (YAJL_GET_STRING(yajl_tree_get(v, path, yajl_t_string)));
}

/* Generate a parsed value again (for pretty printing). */
static void
ctl_gen_value(yajl_gen g, yajl_val v)
{
	size_t	i;

	if (YAJL_IS_STRING(v))
		yajl_gen_string(g, (const unsigned char *)v->u.string,
		    strlen(v->u.string));
	else if (YAJL_IS_NUMBER(v))
		yajl_gen_number(g, v->u.number.r, strlen(v->u.number.r));
	else if (YAJL_IS_OBJECT(v)) {
		yajl_gen_map_open(g);
		for (i = 0; i < v->u.object.len; i++) {
			yajl_gen_string(g,
			    (const unsigned char *)v->u.object.keys[i],
			    strlen(v->u.object.keys[i]));
			ctl_gen_value(g, v->u.object.values[i]);
		}
		yajl_gen_map_close(g);
	} else if (YAJL_IS_ARRAY(v)) {
		yajl_gen_array_open(g);
		for (i = 0; i < v->u.array.len; i++)
			ctl_gen_value(g, v->u.array.values[i]);
		yajl_gen_array_close(g);
	} else if (YAJL_IS_TRUE(v) || YAJL_IS_FALSE(v))
		yajl_gen_bool(g, YAJL_IS_TRUE(v));
	else
		yajl_gen_null(g);
}

/* Print an answer: indented on a terminal, else the line as it came. */
static void
ctl_print(const char *line, yajl_val v)
{
	const unsigned char	*buf;
	size_t			 len;
	yajl_gen		 g;

	if (!isatty(STDOUT_FILENO)) {
		printf("%s\n", line);
		return;
	}
	if ((g = yajl_gen_alloc(NULL)) == NULL)
		ctl_fail("out of memory");
	yajl_gen_config(g, yajl_gen_beautify, 1);
	yajl_gen_config(g, yajl_gen_indent_string, "  ");
	ctl_gen_value(g, v);
	yajl_gen_get_buf(g, &buf, &len);
	fwrite(buf, 1, len, stdout);
	if (len == 0 || buf[len - 1] != '\n')
		putchar('\n');
	yajl_gen_free(g);
}

/* Send one command, print its answer, return the exit status. */
static int
ctl_command(struct ctl_conn *conn, int argc, char **argv)
{
	char		 cmd[CTL_LINE_MAX + 1], *line;
	yajl_val	 v;
	int		 rv;

	if (ctl_build(cmd, sizeof cmd, argc, argv) != 0) {
		fprintf(stderr, "phoneclaimctl: arguments with control "
		    "characters, or longer than %d bytes, cannot be sent\n",
		    CTL_LINE_MAX);
		return (CTL_EXIT_FAIL);
	}
	ctl_send(conn, cmd);
	line = ctl_read_line(conn);
	v = ctl_parse(line);
	ctl_print(line, v);
	rv = ctl_has(v, "error") ? CTL_EXIT_ERROR : CTL_EXIT_OK;
	yajl_tree_free(v);
	free(line);
	return (rv);
}

/* Strip blanks around a field. */
static void
ctl_trim(char **fp)
{
	char	*f = *fp;
	size_t	 len;

	while (*f == ' ' || *f == '\t')
		f++;
	len = strlen(f);
	while (len > 0 && (f[len - 1] == ' ' || f[len - 1] == '\t'))
		f[--len] = '\0';
	*fp = f;
}

/*
 * Split a CSV line in place into at most max fields: commas separate
 * them, a field in double quotes may hold commas and "" for a quote.
 * Returns the number of fields, or -1 if malformed or too many.
 */
static int
ctl_csv_split(char *line, char **fields, int max)
{
	char	*p = line, *out;
	int	 n = 0;

	for (;;) {
		if (n == max)
			return (-1);
		while (*p == ' ' || *p == '\t')
			p++;
		fields[n++] = out = p;
		if (*p == '"') {
			for (p++;; p++) {
				if (*p == '\0')
					return (-1);
				if (*p == '"' && p[1] != '"')
					break;
				if (*p == '"')
					p++;
				*out++ = *p;
			}
			p++;
			while (*p == ' ' || *p == '\t')
				p++;
			if (*p != ',' && *p != '\0')
				return (-1);
		} else {
			while (*p != ',' && *p != '\0')
				*out++ = *p++;
		}
		if (*p == '\0') {
			*out = '\0';
			ctl_trim(&fields[n - 1]);
			return (n);
		}
		p++;
		*out = '\0';
		ctl_trim(&fields[n - 1]);
	}
}

/* Note why a line was not claimed, for the report. */
static void
ctl_note(struct ctl_import *im, unsigned long lineno, const char *what,
    const char *why)
{
	struct ctl_line_note	*n;

	im->notes = reallocarray(im->notes, im->nnotes + 1, sizeof *n);
	if (im->notes == NULL)
		ctl_fail("out of memory");
	n = &im->notes[im->nnotes++];
	n->lineno = lineno;
	if (asprintf(&n->text, "%s%s%s", what, why != NULL ? ": " : "",
	    why != NULL ? why : "") == -1)
		ctl_fail("out of memory");
}

/* Order notes by line. */
static int
ctl_note_cmp(const void *a, const void *b)
{
	const struct ctl_line_note	*x = a, *y = b;

	return (x->lineno < y->lineno ? -1 : x->lineno > y->lineno);
}

/* Print the counts, then each line not claimed and why, in line order. */
static void
ctl_import_report(struct ctl_import *im, unsigned long lineno)
{
	size_t	i;

	printf("lines read: %lu\nclaimed: %lu\ntaken: %lu\nexempt: %lu\n"
	    "refused: %lu\n", im->read, im->claimed, im->taken, im->exempt,
	    im->refused);
	if (im->nnotes > 0)
		qsort(im->notes, im->nnotes, sizeof *im->notes, ctl_note_cmp);
	for (i = 0; i < im->nnotes; i++) {
		printf("line %lu: %s\n", im->notes[i].lineno,
		    im->notes[i].text);
		free(im->notes[i].text);
	}
	free(im->notes);
	if (im->stop)
		printf("import stopped after line %lu\n", lineno);
}

/*
 * Send the claim of one CSV line, unless it is blank, a comment, the
 * header, or malformed (refused here).  *header is cleared once the first
 * data line has gone by.
 */
static int
ctl_import_line(struct ctl_conn *conn, struct ctl_import *im, char *line,
    unsigned long lineno, int *header)
{
	char	 cmd[CTL_LINE_MAX + 1], *f[2], *words[3];

	line[strcspn(line, "\r\n")] = '\0';
	ctl_trim(&line);
	if (*line == '\0' || *line == '#')
		return (0);
	if (*header) {
		*header = 0;
		if (strcasecmp(line, "number,user_id") == 0)
			return (0);
	}
	im->read++;
	if (ctl_csv_split(line, f, 2) != 2 || *f[0] == '\0' || *f[1] == '\0') {
		im->refused++;
		ctl_note(im, lineno, "refused", "expected number,user_id");
		return (0);
	}
	words[0] = "claim";
	words[1] = f[0];
	words[2] = f[1];
	if (ctl_build(cmd, sizeof cmd, 3, words) != 0) {
		im->refused++;
		ctl_note(im, lineno, "refused", "control characters or too "
		    "long");
		return (0);
	}
	ctl_send(conn, cmd);
	im->inflight[(im->first + im->n) % CTL_WINDOW] = lineno;
	im->n++;
	return (1);
}

/* Read the answer to the oldest claim in flight and count it. */
static void
ctl_import_answer(struct ctl_conn *conn, struct ctl_import *im)
{
	unsigned long	 lineno = im->inflight[im->first];
	const char	*result, *error;
	char		*line;
	yajl_val	 v;

	im->first = (im->first + 1) % CTL_WINDOW;
	im->n--;
	line = ctl_read_line(conn);
	v = ctl_parse(line);
	result = ctl_str(v, "result");
	if ((error = ctl_str(v, "error")) != NULL || result == NULL) {
		im->refused++;
		ctl_note(im, lineno, "refused", error != NULL ? error :
		    "unexpected answer");
		if (error != NULL && (strcmp(error, "forbidden") == 0 ||
		    strcmp(error, "unavailable") == 0))
			im->stop = 1;
	} else if (strcmp(result, "active") == 0)
		im->claimed++;
	else if (strcmp(result, "exempt") == 0) {
		im->exempt++;
		ctl_note(im, lineno, "exempt number, not stored", NULL);
	} else {
		im->taken++;
		ctl_note(im, lineno, "taken", "already held by another user");
	}
	yajl_tree_free(v);
	free(line);
}

/* import FILE: claim every number,user_id line; print what happened. */
static int
ctl_import(struct ctl_conn *conn, const char *path)
{
	struct ctl_import	 im;
	FILE			*f;
	char			*line = NULL;
	size_t			 size = 0;
	unsigned long		 lineno = 0;
	int			 header = 1;

	memset(&im, 0, sizeof im);
	if (strcmp(path, "-") == 0)
		f = stdin;
	else if ((f = fopen(path, "r")) == NULL)
		ctl_fail("%s: %s", path, strerror(errno));
	while (!im.stop && getline(&line, &size, f) != -1) {
		lineno++;
		ctl_import_line(conn, &im, line, lineno, &header);
		if (im.n == CTL_WINDOW)
			ctl_import_answer(conn, &im);
	}
	if (ferror(f))
		ctl_fail("%s: %s", path, strerror(errno));
	while (im.n > 0)
		ctl_import_answer(conn, &im);
	free(line);
	if (f != stdin)
		fclose(f);
	ctl_import_report(&im, lineno);
	return (im.refused > 0 ? CTL_EXIT_ERROR : CTL_EXIT_OK);
}

/* Write a CSV field, in quotes when it needs them. */
static void
ctl_csv_write(const char *s)
{
	const char	*p;

	if (strpbrk(s, ",\"\r\n") == NULL && *s != ' ' &&
	    (*s == '\0' || s[strlen(s) - 1] != ' ')) {
		fputs(s, stdout);
		return;
	}
	putchar('"');
	for (p = s; *p != '\0'; p++) {
		if (*p == '"')
			putchar('"');
		putchar(*p);
	}
	putchar('"');
}

/* Write one exported claim as a CSV row; 1 at the end, -1 on error. */
static int
ctl_export_row(yajl_val v, unsigned long *rows)
{
	const char	*user, *number, *state, *since, *error;
	const char	*path[2] = { "end", NULL };
	yajl_val	 end;

	if ((error = ctl_str(v, "error")) != NULL) {
		fprintf(stderr, "phoneclaimctl: export failed: %s\n", error);
		return (-1);
	}
	if ((end = yajl_tree_get(v, path, yajl_t_number)) != NULL) {
		if (YAJL_IS_INTEGER(end) &&
		    (unsigned long long)YAJL_GET_INTEGER(end) == *rows)
			return (1);
		ctl_fail("export: %lu claims received, the daemon sent %s",
		    *rows, YAJL_GET_NUMBER(end));
	}
	user = ctl_str(v, "user_id");
	number = ctl_str(v, "number");
	state = ctl_str(v, "state");
	since = ctl_str(v, "since");
	if (user == NULL || number == NULL || state == NULL)
		ctl_fail("unreadable export line from the daemon");
	/* The number comes as an ellipsis and its last digits. */
	while (*number != '\0' && !isdigit((unsigned char)*number))
		number++;
	ctl_csv_write(user);
	printf(",%s,%s,%s\n", number, state, since != NULL ? since : "");
	(*rows)++;
	return (0);
}

/* export: every claim as CSV, under a header unless it fails at once. */
static int
ctl_export(struct ctl_conn *conn)
{
	unsigned long	 rows = 0;
	char		*line;
	yajl_val	 v;
	int		 r, header = 0;

	ctl_send(conn, "export");
	do {
		line = ctl_read_line(conn);
		v = ctl_parse(line);
		if (!header && !ctl_has(v, "error")) {
			printf("user_id,last4,state,since\n");
			header = 1;
		}
		r = ctl_export_row(v, &rows);
		yajl_tree_free(v);
		free(line);
	} while (r == 0);
	if (fflush(stdout) != 0 || ferror(stdout))
		ctl_fail("writing the export: %s", strerror(errno));
	return (r == 1 ? CTL_EXIT_OK : CTL_EXIT_ERROR);
}

/*
 * backup DIR: DIR made absolute against our working directory, then the
 * answer, which comes when the backup is over.
 */
static int
ctl_backup(struct ctl_conn *conn, const char *dir)
{
	char	 cwd[PATH_MAX], name[] = "backup", *path, *argv[2];
	int	 rv;

	if (*dir == '\0')
		ctl_fail("backup: the directory is empty");
	if (*dir == '/')
		path = strdup(dir);
	else {
		if (getcwd(cwd, sizeof cwd) == NULL)
			ctl_fail("getcwd: %s", strerror(errno));
		if (asprintf(&path, "%s%s%s", cwd, strcmp(cwd, "/") == 0 ?
		    "" : "/", dir) == -1)
			path = NULL;
	}
	if (path == NULL)
		ctl_fail("out of memory");
	argv[0] = name;
	argv[1] = path;
	conn->timeout_ms = CTL_WAIT_FOREVER;
	rv = ctl_command(conn, 2, argv);
	free(path);
	return (rv);
}

/* Parse the options, connect, run the command. */
int
main(int argc, char **argv)
{
	struct ctl_conn	 conn;
	const char	*path;
	int		 ch, rv;

	if ((path = getenv(CTL_SOCKET_ENV)) == NULL || *path == '\0')
		path = CTL_SOCKET_DEFAULT;
	while ((ch = getopt(argc, argv, "+hs:")) != -1) {
		switch (ch) {
		case 'h':
			ctl_usage(stdout);
			return (CTL_EXIT_OK);
		case 's':
			path = optarg;
			break;
		default:
			ctl_usage(stderr);
			return (CTL_EXIT_FAIL);
		}
	}
	argc -= optind;
	argv += optind;
	if (argc == 0 || (strcmp(argv[0], "import") == 0 && argc != 2) ||
	    (strcmp(argv[0], "export") == 0 && argc != 1) ||
	    (strcmp(argv[0], "backup") == 0 && argc != 2)) {
		ctl_usage(stderr);
		return (CTL_EXIT_FAIL);
	}
	ctl_connect(&conn, path);
	if (strcmp(argv[0], "import") == 0)
		rv = ctl_import(&conn, argv[1]);
	else if (strcmp(argv[0], "export") == 0)
		rv = ctl_export(&conn);
	else if (strcmp(argv[0], "backup") == 0)
		rv = ctl_backup(&conn, argv[1]);
	else
		rv = ctl_command(&conn, argc, argv);
	close(conn.fd);
	free(conn.buf);
	return (rv);
}
