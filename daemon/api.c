/*
 * POST /v1/claims, called by the Auth0 Action, and GET /healthz.  Parses
 * and checks the request, then hands it to the claim rules.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/http.h>
#include <yajl/yajl_tree.h>

#include "log.h"
#include "phone.h"
#include "phoneclaimd.h"
#include "xmalloc.h"

struct api_request {
	char	e164[PHONE_E164_SIZE];
	char	user_id[USER_ID_MAX + 1];
	int	action;
};

static const char	*api_parse(const struct conf *, struct evbuffer *,
			    struct api_request *);
static const char	*api_field(yajl_val, const char *, const char **);
static int		 api_action(const char *);

/* Find a string member of an object; an error code if it is no string. */
static const char *
api_field(yajl_val obj, const char *name, const char **out)
{
	size_t	i;

	*out = NULL;
	for (i = 0; i < obj->u.object.len; i++) {
		if (strcmp(obj->u.object.keys[i], name) != 0)
			continue;
		if (!YAJL_IS_STRING(obj->u.object.values[i]))
			return ("not a string");
		*out = YAJL_GET_STRING(obj->u.object.values[i]);
	}
	return (NULL);
}

/* Map an action name (Action trigger or phone provider) to the enum. */
static int
api_action(const char *s)
{
	if (s == NULL || strcmp(s, "enrollment") == 0 ||
	    strcmp(s, "otp_enroll") == 0)
		return (CLAIMS_ENROLL);
	if (strcmp(s, "second-factor-authentication") == 0 ||
	    strcmp(s, "otp_verify") == 0)
		return (CLAIMS_CHALLENGE);
	return (0);
}

/* Parse and check a claim request; an error code, or NULL if good. */
static const char *
api_parse(const struct conf *conf, struct evbuffer *body,
    struct api_request *r)
{
	yajl_val	 root;
	const char	*phone, *user, *action, *error = NULL;
	char		*cause;
	size_t		 len = evbuffer_get_length(body);

	root = json_parse((const char *)evbuffer_pullup(body, -1), len,
	    &cause);
	if (root == NULL) {
		free(cause);
		return ("invalid_json");
	}
	if (!YAJL_IS_OBJECT(root)) {
		error = "invalid_json";
		goto out;
	}
	if (api_field(root, "phone_number", &phone) != NULL ||
	    phone == NULL || phone_normalise(phone, strlen(phone),
	    conf->default_region, r->e164) != 0) {
		error = "invalid_phone_number";
		goto out;
	}
	if (api_field(root, "user_id", &user) != NULL || user == NULL ||
	    !claims_user_id_ok(user)) {
		error = "invalid_user_id";
		goto out;
	}
	snprintf(r->user_id, sizeof r->user_id, "%s", user);
	if (api_field(root, "action", &action) != NULL ||
	    (r->action = api_action(action)) == 0)
		error = "invalid_action";
out:
	json_free(root);
	return (error);
}

/* POST /v1/claims: check-and-reserve, or learn on a login challenge. */
void
api_claims_cb(struct evhttp_request *req, void *arg)
{
	struct http		*h = arg;
	struct api_request	 r;
	struct claims_answer	 a;
	const char		*error;
	char			 body[128];
	int			 rv, code = 200;

	if (!http_authorised(h, req, HTTP_TOKEN_API)) {
		http_error(h, req, 401, "unauthorized");
		return;
	}
	error = api_parse(http_conf(h), evhttp_request_get_input_buffer(req),
	    &r);
	if (error != NULL) {
		http_error(h, req, 400, error);
		return;
	}
	if (!http_store_ok(h)) {
		http_error(h, req, 503, "unavailable");
		return;
	}
	rv = claims_request(r.e164, r.user_id, r.action, (int64_t)time(NULL),
	    &a);
	if (rv != STORE_OK) {
		http_error(h, req, 503, "unavailable");
		return;
	}
	if (a.result == CLAIMS_RESERVED)
		snprintf(body, sizeof body,
		    "{\"result\":\"reserved\",\"expires_in\":%lld}",
		    (long long)a.expires_in);
	else if (a.result == CLAIMS_TAKEN && !a.enforced)
		snprintf(body, sizeof body,
		    "{\"result\":\"taken\",\"enforced\":false}");
	else
		snprintf(body, sizeof body, "{\"result\":\"%s\"}",
		    claims_result_name(a.result));
	if (a.result == CLAIMS_TAKEN && a.enforced)
		code = 409;
	log_debug("claim by %s on a number ending %s: %s", r.user_id,
	    r.e164 + strlen(r.e164) - LAST4_LEN, claims_result_name(a.result));
	http_reply(h, req, code, body);
}

/* GET /healthz: 200 while the store accepts commits, else 503. */
void
api_healthz_cb(struct evhttp_request *req, void *arg)
{
	struct http	*h = arg;

	if (http_store_ok(h))
		http_reply(h, req, 200, "{\"status\":\"ok\"}");
	else
		http_error(h, req, 503, "unavailable");
}
