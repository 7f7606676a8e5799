/*
 * TLS for the HTTP server: one SSL_CTX built from the certificate chain and
 * key files, and an OpenSSL bufferevent for each connection.
 *
 * SIGHUP builds a new context from the files and swaps it in only if it
 * loads and the key matches; until then the old one stays.  An SSL holds a
 * reference to the context it was made from, so connections already open
 * keep theirs and it is freed with the last of them.
 *
 * Who closes what: evhttp closes a connection's socket itself unless the
 * bufferevent has BEV_OPT_CLOSE_ON_FREE.  Without that option libevent's
 * be_openssl_destruct neither closes the socket nor frees the SSL, and a
 * bufferevent has no hook to tell us when it is finally destroyed, so we
 * could not free the SSL at a safe moment.  With it, evhttp leaves the
 * socket alone and the destructor closes the socket and frees the SSL.
 * The destructor runs only once the last reference is gone (http.c holds
 * one until evhttp's close callback) and after the socket's events have
 * been removed, so the descriptor is never closed while libevent still
 * watches it.  The socket BIO that evhttp's bufferevent_setfd attaches is
 * made with BIO_NOCLOSE, so it is closed exactly once.
 *
 * The request deadline of http.c starts when decrypted bytes arrive.  A
 * client could send one TLS record a byte at a time and decrypted bytes
 * would appear only at its end, so the message callback also reports the
 * header of every record read: the clock of an idle connection starts
 * with the first byte of a record, as it does with plain HTTP.
 */
#include "config.h"

#include <sys/types.h>

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>

#include "log.h"
#include "phoneclaimd.h"
#include "xmalloc.h"

/*
 * TLS 1.2 suites: forward secret AEAD only, strongest first (the server's
 * order wins).  TLS 1.3 keeps OpenSSL's default suites.
 */
#define TLS_CIPHERS \
	"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:" \
	"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:" \
	"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:" \
	"DHE-RSA-AES256-GCM-SHA384:DHE-RSA-AES128-GCM-SHA256"

#define TLS_SUBJECT_MAX	256

struct tls {
	SSL_CTX		*ctx;
	void		(*record_cb)(void *);
	char		 summary[TLS_SUBJECT_MAX + 64];
};

static void	 tls_error(char **, const char *, ...)
		     __attribute__((format(printf, 2, 3)));
static int	 tls_mismatch(void);
static int	 tls_passphrase_cb(char *, int, int, void *);
static void	 tls_msg_cb(int, int, int, const void *, size_t, SSL *,
		     void *);
static SSL_CTX	*tls_ctx_new(const struct conf *, char **);
static void	 tls_describe(struct tls *, SSL_CTX *, const char *);

/*
 * Explain an OpenSSL failure: the message, then the first queued error
 * (the root cause); then empty the error queue.
 */
static void
tls_error(char **cause, const char *fmt, ...)
{
	va_list		 ap;
	unsigned long	 e;
	char		 what[1024], reason[256];

	va_start(ap, fmt);
	vsnprintf(what, sizeof what, fmt, ap);
	va_end(ap);
	if ((e = ERR_get_error()) != 0)
		ERR_error_string_n(e, reason, sizeof reason);
	else
		snprintf(reason, sizeof reason, "unknown error");
	ERR_clear_error();
	xasprintf(cause, "%s: %s", what, reason);
}

/* Return 1 if OpenSSL failed because a key and certificate differ. */
static int
tls_mismatch(void)
{
	unsigned long	e = ERR_peek_error();

	return (ERR_GET_LIB(e) == ERR_LIB_X509 &&
	    ERR_GET_REASON(e) == X509_R_KEY_VALUES_MISMATCH);
}

/* An encrypted key cannot be used: never ask for a passphrase. */
static int
tls_passphrase_cb(char *buf, int size, int rwflag, void *arg)
{
	(void)buf;
	(void)size;
	(void)rwflag;
	(void)arg;
	return (0);
}

/* OpenSSL read the header of a record: tell the connection's owner. */
static void
tls_msg_cb(int write_p, int version, int content_type, const void *buf,
    size_t len, SSL *ssl, void *arg)
{
	struct tls	*tls;

	(void)version;
	(void)buf;
	(void)len;
	if (write_p || content_type != SSL3_RT_HEADER || arg == NULL)
		return;
	tls = SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl));
	if (tls != NULL && tls->record_cb != NULL)
		tls->record_cb(arg);
}

/* Build a server context from the configured chain and key files. */
static SSL_CTX *
tls_ctx_new(const struct conf *conf, char **cause)
{
	SSL_CTX	*ctx;

	ERR_clear_error();
	/* The key file may have changed since the configuration was read. */
	if (conf_check_private(conf->tls_key_file, cause) != 0)
		return (NULL);
	if ((ctx = SSL_CTX_new(TLS_server_method())) == NULL) {
		tls_error(cause, "SSL_CTX_new");
		return (NULL);
	}
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE |
	    SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
	SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
	SSL_CTX_set_dh_auto(ctx, 1);
	SSL_CTX_set_default_passwd_cb(ctx, tls_passphrase_cb);
	if (SSL_CTX_set_cipher_list(ctx, TLS_CIPHERS) != 1) {
		tls_error(cause, "TLS cipher list");
		goto fail;
	}
	if (SSL_CTX_use_certificate_chain_file(ctx,
	    conf->tls_cert_file) != 1) {
		tls_error(cause, "%s: cannot load the certificate chain",
		    conf->tls_cert_file);
		goto fail;
	}
	if (SSL_CTX_use_PrivateKey_file(ctx, conf->tls_key_file,
	    SSL_FILETYPE_PEM) != 1 && !tls_mismatch()) {
		tls_error(cause, "%s: cannot load the private key",
		    conf->tls_key_file);
		goto fail;
	}
	/* A key that differs was refused by the line above already. */
	if (tls_mismatch() || SSL_CTX_check_private_key(ctx) != 1) {
		tls_error(cause, "%s: does not match the certificate in %s",
		    conf->tls_key_file, conf->tls_cert_file);
		goto fail;
	}
	return (ctx);
fail:
	SSL_CTX_free(ctx);
	return (NULL);
}

/*
 * Describe the certificate of ctx (subject and expiry, nothing secret) in
 * tls->summary, and warn if it has expired.
 */
static void
tls_describe(struct tls *tls, SSL_CTX *ctx, const char *path)
{
	X509		*x;
	BIO		*bio;
	const ASN1_TIME	*end;
	struct tm	 tm;
	char		 subject[TLS_SUBJECT_MAX], expires[32];
	int		 n;

	snprintf(subject, sizeof subject, "?");
	snprintf(expires, sizeof expires, "?");
	if ((x = SSL_CTX_get0_certificate(ctx)) == NULL) {
		snprintf(tls->summary, sizeof tls->summary, "no certificate");
		return;
	}
	if ((bio = BIO_new(BIO_s_mem())) != NULL) {
		X509_NAME_print_ex(bio, X509_get_subject_name(x), 0,
		    XN_FLAG_RFC2253);
		n = BIO_read(bio, subject, sizeof subject - 1);
		subject[n > 0 ? n : 0] = '\0';
		BIO_free(bio);
	}
	end = X509_get0_notAfter(x);
	memset(&tm, 0, sizeof tm);
	if (ASN1_TIME_to_tm(end, &tm) == 1)
		strftime(expires, sizeof expires, "%Y-%m-%dT%H:%M:%SZ", &tm);
	snprintf(tls->summary, sizeof tls->summary, "subject %s, expires %s",
	    subject, expires);
	if (X509_cmp_current_time(end) <= 0)
		log_warnx("%s: the certificate expired on %s", path, expires);
	ERR_clear_error();
}

/* Load the certificate and key named in conf; NULL with *cause if not. */
struct tls *
tls_init(const struct conf *conf, char **cause)
{
	struct tls	*tls;

	tls = xcalloc(1, sizeof *tls);
	if ((tls->ctx = tls_ctx_new(conf, cause)) == NULL) {
		free(tls);
		return (NULL);
	}
	SSL_CTX_set_app_data(tls->ctx, tls);
	tls_describe(tls, tls->ctx, conf->tls_cert_file);
	return (tls);
}

/*
 * Load the files again and use them for new connections; on failure keep
 * the old context and return -1 with *cause.
 */
int
tls_reload(struct tls *tls, const struct conf *conf, char **cause)
{
	SSL_CTX	*ctx;

	if ((ctx = tls_ctx_new(conf, cause)) == NULL)
		return (-1);
	SSL_CTX_set_app_data(ctx, tls);
	/* Open connections hold their own references to the old one. */
	SSL_CTX_free(tls->ctx);
	tls->ctx = ctx;
	tls_describe(tls, tls->ctx, conf->tls_cert_file);
	return (0);
}

/* Return "subject ..., expires ..." of the certificate in use. */
const char *
tls_summary(struct tls *tls)
{
	return (tls->summary);
}

/*
 * Make the bufferevent of a new server connection, to be given its socket
 * by evhttp.  record_cb(arg) is called whenever a TLS record starts to
 * arrive; NULL if the bufferevent cannot be made.
 */
struct bufferevent *
tls_bufferevent(struct tls *tls, struct event_base *base,
    void (*record_cb)(void *), void *arg)
{
	struct bufferevent	*bev;
	SSL			*ssl;

	if ((ssl = SSL_new(tls->ctx)) == NULL) {
		ERR_clear_error();
		return (NULL);
	}
	tls->record_cb = record_cb;
	SSL_set_msg_callback(ssl, tls_msg_cb);
	SSL_set_msg_callback_arg(ssl, arg);
	/* See the top of this file: the bufferevent owns socket and SSL. */
	bev = bufferevent_openssl_socket_new(base, -1, ssl,
	    BUFFEREVENT_SSL_ACCEPTING, BEV_OPT_CLOSE_ON_FREE);
	if (bev == NULL)
		return (NULL);	/* libevent freed the SSL */
	/* Clients that close without close_notify are usual for HTTP. */
	bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
	return (bev);
}

/*
 * The connection behind a TLS bufferevent is gone: stop passing its
 * record notices to the callback argument, which is about to be freed.
 */
void
tls_forget(struct bufferevent *bev)
{
	SSL	*ssl;

	if ((ssl = bufferevent_openssl_get_ssl(bev)) != NULL)
		SSL_set_msg_callback_arg(ssl, NULL);
}

/* Free the context; connections still open keep it until they close. */
void
tls_free(struct tls *tls)
{
	if (tls == NULL)
		return;
	SSL_CTX_free(tls->ctx);
	free(tls);
}
