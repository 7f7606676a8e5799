/*
 * Unit tests for conf.c: the key table, defaults, errors with file:line,
 * and private secret files.
 */
#include "config.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "phoneclaimd.h"
#include "unit.h"
#include "xmalloc.h"

struct fixture {
	char	*dir;
	char	*api;
	char	*stream;
};

static int
setup(void **state)
{
	struct fixture	*f = xcalloc(1, sizeof *f);

	f->dir = unit_tmpdir();
	f->api = unit_write(f->dir, "api.token", "secret-api\n", 0600);
	f->stream = unit_write(f->dir, "stream.token", "Bearer s\r\n", 0600);
	*state = f;
	return (0);
}

static int
teardown(void **state)
{
	struct fixture	*f = *state;

	unit_rmtree(f->dir);
	free(f->dir);
	free(f->api);
	free(f->stream);
	free(f);
	return (0);
}

/* Write a config with the two required keys and extra lines. */
static char *
write_conf(struct fixture *f, const char *extra)
{
	char	*text, *path;

	xasprintf(&text, "# test\napi_token_file = %s\n"
	    "log_stream_token_file=%s\n%s", f->api, f->stream, extra);
	path = unit_write(f->dir, "test.conf", text, 0644);
	free(text);
	return (path);
}

/* Load a config that must fail, and check the message. */
static void
expect_error(struct fixture *f, const char *extra, const char *want)
{
	char		*path, *cause = NULL;
	struct conf	*c;

	path = write_conf(f, extra);
	c = conf_load(path, &cause);
	assert_null(c);
	assert_non_null(cause);
	if (strstr(cause, want) == NULL)
		fail_msg("error \"%s\" does not contain \"%s\"", cause, want);
	free(cause);
	free(path);
}

static void
test_defaults(void **state)
{
	struct fixture	*f = *state;
	char		*path, *cause = NULL;
	struct conf	*c;

	path = write_conf(f, "");
	c = conf_load(path, &cause);
	assert_non_null(c);
	assert_string_equal(c->listen, "127.0.0.1:8080");
	assert_string_equal(c->state_dir, "/var/lib/phoneclaimd");
	assert_string_equal(c->status_socket, "/run/phoneclaimd/status.sock");
	assert_string_equal(c->hash_key_file, "/var/lib/phoneclaimd/hash.key");
	assert_int_equal(c->mode, CONF_MODE_ENFORCE);
	assert_int_equal(c->pending_ttl, 600);
	assert_int_equal(c->max_users_per_number, 1);
	assert_int_equal(c->max_reservations_per_user, 10);
	assert_null(c->exempt_numbers_file);
	assert_null(c->default_region);
	assert_int_equal(c->max_body_size, 8388608);
	assert_int_equal(c->dedup_retention, 2592000);
	assert_int_equal(c->log_level, 2);
	assert_int_equal(c->request_timeout, 10);
	assert_int_equal(c->max_connections, 1024);
	/* threads: the cores online. */
	assert_true(c->threads >= 1 && c->threads <= CONF_THREADS_MAX);
	if (sysconf(_SC_NPROCESSORS_ONLN) <= CONF_THREADS_MAX)
		assert_int_equal(c->threads, sysconf(_SC_NPROCESSORS_ONLN));
	conf_free(c);
	free(path);
}

static void
test_every_key(void **state)
{
	struct fixture	*f = *state;
	char		*path, *cause = NULL;
	struct conf	*c;

	path = write_conf(f,
	    "listen = [::1]:9000\n"
	    "state_dir = /tmp/x   # trailing comment\n"
	    "status_socket = /tmp/x/s.sock\n"
	    "hash_key_file = /tmp/x/k\n"
	    "mode = monitor\n"
	    "pending_ttl = 30\n"
	    "max_users_per_number = 2\n"
	    "exempt_numbers_file = /tmp/x/exempt\n"
	    "default_region = GB\n"
	    "max_body_size = 4096\n"
	    "dedup_retention = 3600\n"
	    "log_level = debug\n"
	    "request_timeout = 3\n"
	    "\t max_connections\t=\t8 \n"
	    "threads = 3\n");
	c = conf_load(path, &cause);
	if (c == NULL)
		fail_msg("%s", cause);
	assert_string_equal(c->listen, "[::1]:9000");
	assert_string_equal(c->state_dir, "/tmp/x");
	assert_string_equal(c->hash_key_file, "/tmp/x/k");
	assert_int_equal(c->mode, CONF_MODE_MONITOR);
	assert_int_equal(c->pending_ttl, 30);
	assert_int_equal(c->max_users_per_number, 2);
	assert_string_equal(c->exempt_numbers_file, "/tmp/x/exempt");
	assert_string_equal(c->default_region, "GB");
	assert_int_equal(c->max_body_size, 4096);
	assert_int_equal(c->dedup_retention, 3600);
	assert_int_equal(c->log_level, 3);
	assert_int_equal(c->request_timeout, 3);
	assert_int_equal(c->max_connections, 8);
	assert_int_equal(c->threads, 3);
	conf_free(c);
	free(path);
}

static void
test_hash_key_follows_state_dir(void **state)
{
	struct fixture	*f = *state;
	char		*path, *cause = NULL;
	struct conf	*c;

	path = write_conf(f, "state_dir = /srv/pcd\n");
	c = conf_load(path, &cause);
	assert_non_null(c);
	assert_string_equal(c->hash_key_file, "/srv/pcd/hash.key");
	conf_free(c);
	free(path);
}

static void
test_errors_name_file_and_line(void **state)
{
	struct fixture	*f = *state;

	expect_error(f, "bogus = 1\n", "test.conf:4: unknown key: bogus");
	expect_error(f, "pending_ttl = ten\n", "test.conf:4: pending_ttl: "
	    "not a number");
	expect_error(f, "pending_ttl = -5\n", "test.conf:4: pending_ttl: "
	    "not a number");
	expect_error(f, "pending_ttl = 0\n", "test.conf:4: pending_ttl: 0 is "
	    "out of range");
	expect_error(f, "max_users_per_number = 99999999999999999999\n",
	    "test.conf:4: max_users_per_number: not a number");
	expect_error(f, "mode = strict\n", "test.conf:4: mode: expected");
	expect_error(f, "threads = 0\n", "test.conf:4: threads: 0 is out of "
	    "range (1 to 256)");
	expect_error(f, "threads = 257\n", "test.conf:4: threads: 257 is out "
	    "of range (1 to 256)");
	expect_error(f, "threads = auto\n", "test.conf:4: threads: not a "
	    "number: auto");
	expect_error(f, "log_level = loud\n", "test.conf:4: log_level:");
	expect_error(f, "default_region = gb\n", "test.conf:4: "
	    "default_region:");
	expect_error(f, "default_region = QQ\n", "test.conf:4: "
	    "default_region:");
	expect_error(f, "listen = 8080\n", "test.conf:4: listen:");
	expect_error(f, "listen = host:99999\n", "test.conf:4: listen:");
	expect_error(f, "listen = ::1:80\n", "test.conf:4: listen:");
	expect_error(f, "state_dir = relative/dir\n", "test.conf:4: "
	    "state_dir: must be an absolute path");
	expect_error(f, "mode\n", "test.conf:4: expected key = value");
	expect_error(f, "mode =\n", "test.conf:4: mode: missing value");
	expect_error(f, "\n\nmode = monitor\nmode = enforce\n",
	    "test.conf:7: mode: already set on line 6");
}

static void
test_required_keys(void **state)
{
	struct fixture	*f = *state;
	char		*path, *cause = NULL;

	path = unit_write(f->dir, "min.conf", "mode = monitor\n", 0644);
	assert_null(conf_load(path, &cause));
	assert_non_null(strstr(cause, "missing required key api_token_file"));
	free(cause);
	free(path);
}

static void
test_secret_file_must_be_private(void **state)
{
	struct fixture	*f = *state;
	char		*cause = NULL;

	free(unit_write(f->dir, "api.token", "secret-api\n", 0640));
	expect_error(f, "", "test.conf:2: api_token_file:");
	expect_error(f, "", "must not be accessible by group or others");
	free(unit_write(f->dir, "api.token", "secret-api\n", 0600));
	assert_int_not_equal(conf_check_private("/nonexistent/x", &cause), 0);
	free(cause);
}

static void
test_read_secret(void **state)
{
	struct fixture	*f = *state;
	char		*s, *cause = NULL, *p;
	size_t		 len;

	assert_int_equal(conf_read_secret(f->api, &s, &len, &cause), 0);
	assert_string_equal(s, "secret-api");
	assert_int_equal(len, 10);
	free(s);
	assert_int_equal(conf_read_secret(f->stream, &s, &len, &cause), 0);
	assert_string_equal(s, "Bearer s");
	free(s);
	p = unit_write(f->dir, "empty.token", "\n", 0600);
	assert_int_equal(conf_read_secret(p, &s, &len, &cause), -1);
	assert_non_null(strstr(cause, "empty"));
	free(cause);
	free(p);
	p = unit_write(f->dir, "ctl.token", "a\tb\n", 0600);
	assert_int_equal(conf_read_secret(p, &s, &len, &cause), -1);
	assert_non_null(strstr(cause, "control character"));
	/* The message must never quote the secret. */
	assert_null(strstr(cause, "a\tb"));
	free(cause);
	free(p);
}

static void
test_missing_file(void **state)
{
	char	*cause = NULL;

	(void)state;
	assert_null(conf_load("/nonexistent/phoneclaimd.conf", &cause));
	assert_non_null(strstr(cause, "/nonexistent/phoneclaimd.conf"));
	free(cause);
}

/* The replication keys: peers repeat, and each error names its line. */
static void
test_repl_keys(void **state)
{
	struct fixture	*f = *state;
	char		*path, *cause = NULL;
	struct conf	*c;

	path = write_conf(f, "");
	c = conf_load(path, &cause);
	assert_non_null(c);
	assert_null(c->repl_local);
	assert_int_equal(c->repl_npeers, 0);
	assert_int_equal(c->repl_priority, 100);
	assert_string_equal(c->repl_ack_policy, "quorum");
	assert_string_equal(c->repl_ack_durability, "disk");
	assert_int_equal(c->repl_ack_timeout, 5000);
	conf_free(c);
	free(path);

	path = write_conf(f, "repl_local = 127.0.0.1:7001\n"
	    "repl_peer = 127.0.0.1:7002 127.0.0.1:8082\n"
	    "repl_peer =\t[::1]:7003   [::1]:8083\n"
	    "repl_priority = 0\nrepl_ack_policy = all\n"
	    "repl_ack_durability = memory\n");
	c = conf_load(path, &cause);
	assert_non_null(c);
	assert_string_equal(c->repl_local, "127.0.0.1:7001");
	assert_int_equal(c->repl_npeers, 2);
	assert_string_equal(c->repl_peers[0].repl, "127.0.0.1:7002");
	assert_string_equal(c->repl_peers[0].api, "127.0.0.1:8082");
	assert_int_equal(c->repl_peers[0].line, 5);
	assert_string_equal(c->repl_peers[1].repl, "[::1]:7003");
	assert_string_equal(c->repl_peers[1].api, "[::1]:8083");
	assert_int_equal(c->repl_peers[1].line, 6);
	assert_int_equal(c->repl_priority, 0);
	assert_string_equal(c->repl_ack_durability, "memory");
	conf_free(c);
	free(path);

	expect_error(f, "repl_local = 127.0.0.1:7001\n"
	    "repl_peer = 127.0.0.1:7002 nowhere\n",
	    "test.conf:5: repl_peer: expected host:port");
	expect_error(f, "repl_peer = 127.0.0.1:7002 127.0.0.1:8082\n",
	    "test.conf:4: repl_peer is set but repl_local is not");
	expect_error(f, "repl_local = 127.0.0.1:7001\n"
	    "repl_peer = 127.0.0.1:7002 127.0.0.1:8082\n"
	    "repl_peer = 127.0.0.1:7003 127.0.0.1:8080\n",
	    "test.conf:6: repl_peer: 127.0.0.1:7003 is this node");
	expect_error(f, "repl_local = 127.0.0.1:7001\n"
	    "repl_peer = 127.0.0.1:7002 127.0.0.1:8082\n"
	    "repl_ack_timeout = 5\n",
	    "test.conf:6: repl_ack_timeout: 5 is out of range");
}

static void
test_key_names(void **state)
{
	static const char	*want[] = { "listen", "state_dir",
				    "status_socket", "api_token_file",
				    "log_stream_token_file", "hash_key_file",
				    "mode", "pending_ttl",
				    "max_users_per_number",
				    "exempt_numbers_file", "default_region",
				    "max_body_size", "dedup_retention",
				    "log_level" };
	size_t			 i, j;
	int			 found;

	(void)state;
	/* Every key of DESIGN section 6 is in the table. */
	for (i = 0; i < sizeof want / sizeof want[0]; i++) {
		found = 0;
		for (j = 0; conf_key_name(j) != NULL; j++)
			found |= strcmp(conf_key_name(j), want[i]) == 0;
		if (!found)
			fail_msg("key %s missing from the table", want[i]);
	}
}

int
main(void)
{
	const struct CMUnitTest	tests[] = {
		cmocka_unit_test_setup_teardown(test_defaults, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_every_key, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_hash_key_follows_state_dir,
		    setup, teardown),
		cmocka_unit_test_setup_teardown(test_errors_name_file_and_line,
		    setup, teardown),
		cmocka_unit_test_setup_teardown(test_required_keys, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_secret_file_must_be_private,
		    setup, teardown),
		cmocka_unit_test_setup_teardown(test_read_secret, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_repl_keys, setup,
		    teardown),
		cmocka_unit_test(test_missing_file),
		cmocka_unit_test(test_key_names),
	};

	return (cmocka_run_group_tests(tests, NULL, NULL));
}
