"""
The fake tenant of fake_auth0.py, extended with the Management API
endpoints that tools/phoneclaimd-auth0-setup uses, in the shapes of
Auth0's OpenAPI document (docs/auth0-setup.md, "One command", lists the
sources): Actions (list, create, get, update, deploy; triggers and their
bindings), Guardian (factors, phone selected-provider, message types),
Branding phone providers, log streams, clients and client grants.

Tokens carry scopes: the admin credentials get admin_scopes, a client
made through the API gets the scopes of its grants, and every endpoint
answers 403 without its scope, as Auth0 documents.  Request bodies are
checked against the documented properties (an unknown property is a 400,
as additionalProperties: false says).  Action secret values are never
returned; an Action is "building" for build_polls reads after each
change; a log stream's httpAuthorization is shown only if
stream_auth_visible.  Tests edit the state (actions, bindings, streams,
clients, grants, ...) to make drift, and read back every request.
"""

import copy
import json
import re
import secrets
import time
import urllib.parse

from fake_auth0 import FakeAuth0, _Handler

# Every scope the tool may use (docs/auth0-setup.md, "One command").
ALL_SCOPES = (
    "read:actions", "create:actions", "update:actions",
    "read:log_streams", "create:log_streams", "update:log_streams",
    "read:guardian_factors", "update:guardian_factors",
    "read:phone_providers", "create:phone_providers",
    "update:phone_providers",
    "read:clients", "create:clients", "update:clients", "read:client_keys",
    "read:client_grants", "create:client_grants", "update:client_grants")
FACTORS = ("push-notification", "sms", "email", "duo", "otp",
           "webauthn-roaming", "webauthn-platform", "recovery-code")
TRIGGERS = {
    "post-login": "v3",
    "send-phone-message": "v2",
    "custom-phone-provider": "v1",
}
CATEGORIES = (
    "auth.login.fail", "auth.login.notification", "auth.login.success",
    "auth.logout.fail", "auth.logout.success", "auth.signup.fail",
    "auth.signup.success", "auth.silent_auth.fail",
    "auth.silent_auth.success", "auth.token_exchange.fail",
    "auth.token_exchange.success", "management.fail", "management.success",
    "scim.event", "system.notification", "user.fail", "user.notification",
    "user.success", "actions", "other")
CLIENT_KEYS = ("name", "description", "app_type", "grant_types",
               "token_endpoint_auth_method", "callbacks", "is_first_party",
               "oidc_conformant", "client_metadata", "jwt_configuration")


def now():
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


class HttpError(Exception):
    def __init__(self, status, message, code=None):
        super().__init__(message)
        self.status = status
        self.body = {"statusCode": status, "error": {
            400: "Bad Request", 403: "Forbidden", 404: "Not Found",
            409: "Conflict"}.get(status, "Error"), "message": message}
        if code:
            self.body["errorCode"] = code


def check_keys(body, allowed, required=()):
    """additionalProperties: false, and the required properties."""
    if not isinstance(body, dict):
        raise HttpError(400, "Payload validation error: 'Expected type "
                        "object but found type %s'" % type(body).__name__)
    extra = sorted(set(body) - set(allowed))
    if extra:
        raise HttpError(400, "Payload validation error: 'Additional "
                        "properties not allowed: %s'" % ",".join(extra))
    for key in required:
        if key not in body:
            raise HttpError(400, "Payload validation error: 'Missing "
                            "required property: %s'" % key)


def page_of(items, query, key, default=50):
    """page/per_page of a list, as an object with totals."""
    page = int(query.get("page", ["0"])[0])
    per = int(query.get("per_page", [str(default)])[0])
    return {key: items[page * per:(page + 1) * per], "total": len(items),
            "page": page, "per_page": per}


class FakeAuth0Admin(FakeAuth0):
    """A tenant with the admin endpoints, on 127.0.0.1 in a thread."""

    def __init__(self, admin_scopes=ALL_SCOPES, triggers=None, **kw):
        kw.setdefault("client_id", "admin-" + secrets.token_hex(6))
        super().__init__(**kw)
        self.domain = "tenant.example.com"
        self.admin_scopes = set(admin_scopes)
        self.token_scopes = {}
        self.triggers = dict(TRIGGERS if triggers is None else triggers)
        self.actions = {}		# id -> action (with hidden fields)
        self.bindings = {t: [] for t in self.triggers}
        self.selected_provider = "auth0"
        self.factors = {f: False for f in FACTORS}
        self.message_types = []
        self.phone_providers = []
        self.streams = []
        self.clients = {}		# client_id -> client (with secret)
        self.grants = []
        self.build_polls = 1
        self.stream_auth_visible = True
        self.server.RequestHandlerClass = type(
            "AdminHandler", (_AdminHandler,), {"fake": self})

    # Helpers for tests -------------------------------------------------

    def action_named(self, name):
        with self.lock:
            for a in self.actions.values():
                if a["name"] == name:
                    return a
        return None

    def stream_named(self, name):
        with self.lock:
            for s in self.streams:
                if s.get("name") == name:
                    return s
        return None

    def client_named(self, name):
        with self.lock:
            for c in self.clients.values():
                if c.get("name") == name:
                    return c
        return None

    def grant_of(self, client_id):
        with self.lock:
            for g in self.grants:
                if g["client_id"] == client_id:
                    return g
        return None

    def writes(self):
        """The requests that could change the tenant."""
        with self.lock:
            return [(s[0], s[1]) for s in self.seen
                    if s[0] != "GET" and s[1] != "/oauth/token"]

    def secret_values(self, action):
        """The secrets as the Action's deployed version has them."""
        return dict(action.get("_deployed_secrets", {}))

    # Tokens -------------------------------------------------------------

    def issue(self, form):
        """(status, body) for POST /oauth/token: admin or a made client."""
        def one(k):
            return form.get(k, [""])[0]
        if one("grant_type") != "client_credentials" or \
                one("audience") != "https://%s/api/v2/" % self.domain:
            return 403, {"error": "access_denied",
                         "error_description": "Service not enabled"}
        cid, csecret = one("client_id"), one("client_secret")
        with self.lock:
            client = self.clients.get(cid)
            if cid == self.client_id and csecret == self.secret:
                scopes = set(self.admin_scopes)
            elif client is not None and client["client_secret"] == csecret:
                grants = [g for g in self.grants if g["client_id"] == cid]
                if not grants:
                    return 403, {"error": "access_denied",
                                 "error_description": "Client is not "
                                 "authorized to access the API"}
                scopes = set(grants[0]["scope"])
            else:
                return 401, {"error": "access_denied",
                             "error_description": "Unauthorized"}
            tok = "tok-" + secrets.token_hex(16)
            self.tokens.append(tok)
            self.token_scopes[tok] = scopes
        return 200, {"access_token": tok, "token_type": "Bearer",
                     "expires_in": self.expires_in,
                     "scope": " ".join(sorted(scopes))}

    def scopes_of(self, header):
        with self.lock:
            if header is None or not header.startswith("Bearer "):
                return None
            tok = header[7:]
            if tok not in self.tokens or tok in self.revoked:
                return None
            return self.token_scopes.get(tok, set())

    # Actions ------------------------------------------------------------

    def action_view(self, a, poll=False):
        if poll and a["_building"] > 0:
            a["_building"] -= 1
            a["status"] = "building"
        elif a["_building"] == 0:
            a["status"] = "built"
        view = {k: copy.deepcopy(v) for k, v in a.items()
                if not k.startswith("_")}
        view["secrets"] = [{"name": n, "updated_at": t}
                           for n, t in sorted(a["_secret_dates"].items())]
        return view

    def find_action(self, aid):
        a = self.actions.get(aid)
        if a is None:
            raise HttpError(404, "The action does not exist.")
        return a

    def set_secrets(self, a, items):
        if not isinstance(items, list):
            raise HttpError(400, "Payload validation error: 'secrets'")
        values, dates = {}, {}
        for s in items:
            if not isinstance(s, dict) or not s.get("name") or \
                    not isinstance(s.get("value"), str):
                raise HttpError(400, "Payload validation error: a secret "
                                "needs a name and a value")
            values[s["name"]] = s["value"]
            dates[s["name"]] = now()
        a["_secrets"], a["_secret_dates"] = values, dates

    def check_triggers(self, triggers):
        if not isinstance(triggers, list) or len(triggers) != 1 or \
                not isinstance(triggers[0], dict) or \
                triggers[0].get("id") not in self.triggers:
            raise HttpError(400, "Payload validation error: "
                            "'supported_triggers'")
        return [{"id": triggers[0]["id"],
                 "version": triggers[0].get("version") or
                 self.triggers[triggers[0]["id"]]}]

    def create_action(self, body):
        check_keys(body, ("name", "supported_triggers", "code",
                          "dependencies", "runtime", "secrets", "modules",
                          "deploy"), ("name", "supported_triggers"))
        a = {"id": "act-" + secrets.token_hex(8), "name": body["name"],
             "supported_triggers": self.check_triggers(
                 body["supported_triggers"]),
             "code": body.get("code", "module.exports = () => {}"),
             "runtime": body.get("runtime", "node22"),
             "dependencies": body.get("dependencies", []),
             "all_changes_deployed": False, "created_at": now(),
             "updated_at": now(), "status": "building",
             "_building": self.build_polls, "_secrets": {},
             "_secret_dates": {}, "_versions": 0}
        self.set_secrets(a, body.get("secrets", []))
        self.actions[a["id"]] = a
        return 201, self.action_view(a)

    def patch_action(self, aid, body):
        check_keys(body, ("name", "supported_triggers", "code",
                          "dependencies", "runtime", "secrets", "modules"))
        a = self.find_action(aid)
        for key in ("name", "code", "runtime", "dependencies"):
            if key in body:
                a[key] = body[key]
        if "supported_triggers" in body:
            a["supported_triggers"] = self.check_triggers(
                body["supported_triggers"])
        if "secrets" in body:
            self.set_secrets(a, body["secrets"])	# replaces them all
        a["all_changes_deployed"] = False
        a["updated_at"] = now()
        a["_building"] = self.build_polls
        a["status"] = "building"
        return 200, self.action_view(a)

    def deploy_action(self, aid):
        a = self.find_action(aid)
        if a["_building"] > 0:
            raise HttpError(400, "The action is still being built.")
        a["_versions"] += 1
        a["_deployed_secrets"] = dict(a["_secrets"])
        a["deployed_version"] = {
            "id": "ver-" + secrets.token_hex(8), "action_id": aid,
            "code": a["code"], "runtime": a["runtime"],
            "dependencies": a["dependencies"], "deployed": True,
            "status": "built", "number": a["_versions"],
            "secrets": [{"name": n, "updated_at": t}
                        for n, t in sorted(a["_secret_dates"].items())],
            "supported_triggers": a["supported_triggers"],
            "created_at": now(), "updated_at": now(), "built_at": now()}
        a["all_changes_deployed"] = True
        return 202, copy.deepcopy(a["deployed_version"])

    def list_actions(self, query):
        trigger = query.get("triggerId", [None])[0]
        name = query.get("actionName", [None])[0]
        found = [self.action_view(a) for a in self.actions.values()
                 if (name is None or a["name"] == name) and
                 (trigger is None or
                  trigger in [t["id"] for t in a["supported_triggers"]])]
        return 200, page_of(found, query, "actions", 20)

    def list_triggers(self):
        return 200, {"triggers": [
            {"id": t, "version": v, "status": "CURRENT",
             "runtimes": ["node18", "node22"], "default_runtime": "node22"}
            for t, v in self.triggers.items()]}

    def trigger(self, tid):
        if tid not in self.triggers:
            raise HttpError(404, "trigger %s does not exist" % tid)
        return self.bindings.setdefault(tid, [])

    def binding_view(self, b):
        a = self.actions.get(b["_action"])
        return {"id": b["id"], "trigger_id": b["trigger_id"],
                "display_name": b["display_name"],
                "action": self.action_view(a) if a else None,
                "created_at": b["created_at"], "updated_at": now()}

    def list_bindings(self, tid, query):
        found = [self.binding_view(b) for b in self.trigger(tid)]
        return 200, page_of(found, query, "bindings", 20)

    def resolve_ref(self, tid, item, old):
        check_keys(item, ("ref", "display_name", "secrets"), ("ref",))
        ref = item["ref"]
        kind, value = ref.get("type"), ref.get("value")
        if kind == "binding_id":
            for b in old:
                if b["id"] == value:
                    return b
            raise HttpError(400, "binding %s does not exist" % value)
        found = [a for a in self.actions.values()
                 if (kind == "action_id" and a["id"] == value) or
                 (kind == "action_name" and a["name"] == value)]
        if kind not in ("action_id", "action_name") or not found:
            raise HttpError(400, "action %s does not exist" % value)
        a = found[0]
        if tid not in [t["id"] for t in a["supported_triggers"]]:
            raise HttpError(400, "action does not support trigger " + tid)
        if "deployed_version" not in a:
            raise HttpError(400, "the action must be deployed first")
        return {"id": "bnd-" + secrets.token_hex(8), "trigger_id": tid,
                "display_name": item.get("display_name") or a["name"],
                "_action": a["id"], "created_at": now()}

    def patch_bindings(self, tid, body):
        check_keys(body, ("bindings",))
        old = self.trigger(tid)
        new = [self.resolve_ref(tid, i, old) for i in body.get("bindings",
                                                              [])]
        self.bindings[tid] = new
        return 200, {"bindings": [self.binding_view(b) for b in new]}

    # Guardian and phone providers ----------------------------------------

    def put_factor(self, name, body):
        check_keys(body, ("enabled",), ("enabled",))
        if not isinstance(body["enabled"], bool):
            raise HttpError(400, "Payload validation error: 'enabled'")
        self.factors[name] = body["enabled"]
        return 200, {"enabled": body["enabled"]}

    def put_selected(self, body):
        check_keys(body, ("provider",), ("provider",))
        if body["provider"] not in ("auth0", "twilio", "phone-message-hook"):
            raise HttpError(400, "Payload validation error: 'provider'")
        self.selected_provider = body["provider"]
        return 200, {"provider": self.selected_provider}

    def put_message_types(self, body):
        check_keys(body, ("message_types",), ("message_types",))
        types = body["message_types"]
        if not isinstance(types, list) or \
                any(t not in ("sms", "voice") for t in types):
            raise HttpError(400, "Payload validation error: "
                            "'message_types'")
        self.message_types = list(types)
        return 200, {"message_types": self.message_types}

    def check_provider(self, body):
        name = body.get("name")
        if name not in ("twilio", "custom"):
            raise HttpError(400, "Payload validation error: 'name'")
        if name != "custom":
            return
        conf = body.get("configuration")
        if not isinstance(conf, dict):
            raise HttpError(400, "Payload validation error: "
                            "'configuration'")
        check_keys(conf, ("delivery_methods",), ("delivery_methods",))
        methods = conf["delivery_methods"]
        if not isinstance(methods, list) or not methods or \
                any(m not in ("text", "voice") for m in methods):
            raise HttpError(400, "Payload validation error: "
                            "'delivery_methods'")
        if body.get("credentials", {}) != {}:
            raise HttpError(400, "Payload validation error: 'credentials'")
        deployed = [a for a in self.actions.values()
                    if "deployed_version" in a and "custom-phone-provider"
                    in [t["id"] for t in a["supported_triggers"]]]
        if not deployed:
            raise HttpError(400, "No deployed action was found",
                            "custom_email_provider_deployed_action_not_found")

    def create_provider(self, body):
        check_keys(body, ("name", "disabled", "configuration",
                          "credentials"), ("name", "credentials"))
        if self.phone_providers:
            raise HttpError(409, "Custom phone provider conflict.")
        self.check_provider(body)
        p = {"id": "pro_" + secrets.token_hex(8), "tenant": "tenant",
             "name": body["name"], "channel": "phone",
             "disabled": bool(body.get("disabled", False)),
             "configuration": copy.deepcopy(body.get("configuration", {})),
             "created_at": now(), "updated_at": now()}
        self.phone_providers.append(p)
        return 201, copy.deepcopy(p)

    def patch_provider(self, pid, body):
        check_keys(body, ("name", "disabled", "credentials",
                          "configuration"))
        if not body:
            raise HttpError(400, "Payload validation error: empty")
        found = [p for p in self.phone_providers if p["id"] == pid]
        if not found:
            raise HttpError(404, "phone provider not found")
        merged = dict(found[0], **body)
        self.check_provider(merged)
        found[0].update({k: copy.deepcopy(v) for k, v in body.items()
                         if k != "credentials"})
        found[0]["updated_at"] = now()
        return 200, copy.deepcopy(found[0])

    # Log streams --------------------------------------------------------

    def check_sink(self, sink, required=True):
        check_keys(sink, ("httpAuthorization", "httpContentFormat",
                          "httpContentType", "httpEndpoint",
                          "httpCustomHeaders"),
                   ("httpEndpoint",) if required else ())
        if "httpEndpoint" in sink and \
                not str(sink["httpEndpoint"]).startswith("https://"):
            raise HttpError(400, "Payload validation error: 'httpEndpoint' "
                            "must match ^https://")
        if sink.get("httpContentFormat", "JSONARRAY") not in (
                "JSONARRAY", "JSONLINES", "JSONOBJECT"):
            raise HttpError(400, "Payload validation error: "
                            "'httpContentFormat'")

    def check_filters(self, filters):
        if not isinstance(filters, list) or any(
                not isinstance(f, dict) or f.get("type") != "category" or
                f.get("name") not in CATEGORIES for f in filters):
            raise HttpError(400, "Payload validation error: 'filters'")

    def stream_view(self, s):
        view = copy.deepcopy(s)
        if not self.stream_auth_visible:
            view["sink"].pop("httpAuthorization", None)
        return view

    def create_stream(self, body):
        check_keys(body, ("name", "type", "isPriority", "filters",
                          "pii_config", "sink", "startFrom"),
                   ("type", "sink"))
        if body["type"] != "http":
            raise HttpError(400, "this fake knows only http streams")
        self.check_sink(body["sink"])
        self.check_filters(body.get("filters", []))
        s = {"id": "lst_%016d" % secrets.randbelow(10 ** 16),
             "name": body.get("name", "stream"), "type": "http",
             "status": "active", "sink": copy.deepcopy(body["sink"]),
             "filters": copy.deepcopy(body.get("filters", []))}
        self.streams.append(s)
        return 200, self.stream_view(s)

    def patch_stream(self, sid, body):
        check_keys(body, ("name", "status", "isPriority", "filters",
                          "pii_config", "sink"))
        found = [s for s in self.streams if s["id"] == sid]
        if not found:
            raise HttpError(404, "The log stream does not exist")
        s = found[0]
        if "status" in body and body["status"] not in ("active", "paused",
                                                       "suspended"):
            raise HttpError(400, "Payload validation error: 'status'")
        if "sink" in body:
            self.check_sink(body["sink"], required=False)
            s["sink"].update(copy.deepcopy(body["sink"]))
        if "filters" in body:
            self.check_filters(body["filters"])
        for key in ("name", "status", "isPriority", "filters", "pii_config"):
            if key in body:
                s[key] = copy.deepcopy(body[key])
        return 200, self.stream_view(s)

    def get_stream(self, sid):
        for s in self.streams:
            if s["id"] == sid:
                return 200, self.stream_view(s)
        raise HttpError(404, "The log stream does not exist")

    # Clients and grants -------------------------------------------------

    def client_view(self, c, scopes, query):
        view = copy.deepcopy(c)
        if "read:client_keys" not in scopes:
            view.pop("client_secret", None)
        fields = query.get("fields", [None])[0]
        if fields and query.get("include_fields", ["true"])[0] == "true":
            keep = set(fields.split(","))
            view = {k: v for k, v in view.items() if k in keep}
        return view

    def list_clients(self, query, scopes):
        types = query.get("app_type", [None])[0]
        found = [self.client_view(c, scopes, query)
                 for c in self.clients.values()
                 if types is None or c.get("app_type") in types.split(",")]
        if query.get("include_totals", ["false"])[0] == "true":
            return 200, page_of(found, query, "clients")
        return 200, page_of(found, query, "clients")["clients"]

    def find_client(self, cid):
        if cid not in self.clients:
            raise HttpError(404, "The client does not exist")
        return self.clients[cid]

    def create_client(self, body):
        check_keys(body, CLIENT_KEYS, ())
        if not re.fullmatch(r"[^<>]+", str(body.get("name", ""))):
            raise HttpError(400, "Payload validation error: 'name'")
        c = {"client_id": secrets.token_hex(16),
             "client_secret": secrets.token_urlsafe(48),
             "tenant": "tenant", "global": False,
             "app_type": "regular_web",
             "grant_types": ["authorization_code", "implicit",
                             "refresh_token", "client_credentials"],
             "token_endpoint_auth_method": "client_secret_post"}
        c.update(copy.deepcopy(body))
        self.clients[c["client_id"]] = c
        return 201, copy.deepcopy(c)

    def patch_client(self, cid, body):
        check_keys(body, CLIENT_KEYS, ())
        c = self.find_client(cid)
        c.update(copy.deepcopy(body))
        return 200, {k: v for k, v in c.items() if k != "client_secret"}

    def list_grants(self, query):
        cid = query.get("client_id", [None])[0]
        aud = query.get("audience", [None])[0]
        found = [copy.deepcopy(g) for g in self.grants
                 if (cid is None or g["client_id"] == cid) and
                 (aud is None or g["audience"] == aud)]
        if query.get("include_totals", ["false"])[0] == "true":
            return 200, page_of(found, query, "client_grants")
        return 200, page_of(found, query, "client_grants")["client_grants"]

    def check_scope_list(self, scope):
        if not isinstance(scope, list) or \
                any(not isinstance(s, str) or not s for s in scope):
            raise HttpError(400, "Payload validation error: 'scope'")

    def create_grant(self, body):
        check_keys(body, ("client_id", "audience", "scope",
                          "organization_usage", "allow_any_organization",
                          "subject_type", "authorization_details_types",
                          "allow_all_scopes"), ("audience",))
        self.find_client(body.get("client_id"))
        self.check_scope_list(body.get("scope", []))
        if any(g["client_id"] == body["client_id"] and
               g["audience"] == body["audience"] for g in self.grants):
            raise HttpError(409, "A client grant for this client and "
                            "audience already exists")
        g = {"id": "cgr_" + secrets.token_hex(8),
             "client_id": body["client_id"], "audience": body["audience"],
             "scope": list(body.get("scope", []))}
        self.grants.append(g)
        return 201, copy.deepcopy(g)

    def patch_grant(self, gid, body):
        check_keys(body, ("scope", "organization_usage",
                          "allow_any_organization",
                          "authorization_details_types",
                          "allow_all_scopes"))
        if not body:
            raise HttpError(400, "Payload validation error: empty")
        found = [g for g in self.grants if g["id"] == gid]
        if not found:
            raise HttpError(404, "The client grant does not exist")
        if "scope" in body:
            self.check_scope_list(body["scope"])
            found[0]["scope"] = list(body["scope"])
        return 200, copy.deepcopy(found[0])


# method, path (regular expression), scopes (any of), handler
ROUTES = (
    ("GET", r"/api/v2/actions/triggers", ("read:actions",),
     lambda f, m, q, b, s: f.list_triggers()),
    ("GET", r"/api/v2/actions/triggers/([^/]+)/bindings", ("read:actions",),
     lambda f, m, q, b, s: f.list_bindings(m[0], q)),
    ("PATCH", r"/api/v2/actions/triggers/([^/]+)/bindings",
     ("update:actions",), lambda f, m, q, b, s: f.patch_bindings(m[0], b)),
    ("GET", r"/api/v2/actions/actions", ("read:actions",),
     lambda f, m, q, b, s: f.list_actions(q)),
    ("POST", r"/api/v2/actions/actions", ("create:actions",),
     lambda f, m, q, b, s: f.create_action(b)),
    ("GET", r"/api/v2/actions/actions/([^/]+)", ("read:actions",),
     lambda f, m, q, b, s: (200, f.action_view(f.find_action(m[0]), True))),
    ("PATCH", r"/api/v2/actions/actions/([^/]+)", ("update:actions",),
     lambda f, m, q, b, s: f.patch_action(m[0], b)),
    ("POST", r"/api/v2/actions/actions/([^/]+)/deploy", ("create:actions",),
     lambda f, m, q, b, s: f.deploy_action(m[0])),
    ("GET", r"/api/v2/guardian/factors", ("read:guardian_factors",),
     lambda f, m, q, b, s: (200, [{"name": n, "enabled": e,
                                   "trial_expired": False}
                                  for n, e in f.factors.items()])),
    ("GET", r"/api/v2/guardian/factors/phone/selected-provider",
     ("read:guardian_factors",),
     lambda f, m, q, b, s: (200, {"provider": f.selected_provider})),
    ("PUT", r"/api/v2/guardian/factors/phone/selected-provider",
     ("update:guardian_factors",), lambda f, m, q, b, s: f.put_selected(b)),
    ("GET", r"/api/v2/guardian/factors/phone/message-types",
     ("read:guardian_factors",),
     lambda f, m, q, b, s: (200, {"message_types": f.message_types})),
    ("PUT", r"/api/v2/guardian/factors/phone/message-types",
     ("update:guardian_factors",),
     lambda f, m, q, b, s: f.put_message_types(b)),
    ("PUT", r"/api/v2/guardian/factors/(%s)" % "|".join(FACTORS),
     ("update:guardian_factors",),
     lambda f, m, q, b, s: f.put_factor(m[0], b)),
    ("GET", r"/api/v2/branding/phone/providers", ("read:phone_providers",),
     lambda f, m, q, b, s: (200, {"providers": copy.deepcopy(
         f.phone_providers)})),
    ("POST", r"/api/v2/branding/phone/providers",
     ("create:phone_providers",), lambda f, m, q, b, s: f.create_provider(b)),
    ("PATCH", r"/api/v2/branding/phone/providers/([^/]+)",
     ("update:phone_providers",),
     lambda f, m, q, b, s: f.patch_provider(m[0], b)),
    ("GET", r"/api/v2/log-streams", ("read:log_streams",),
     lambda f, m, q, b, s: (200, [f.stream_view(x) for x in f.streams])),
    ("POST", r"/api/v2/log-streams", ("create:log_streams",),
     lambda f, m, q, b, s: f.create_stream(b)),
    ("GET", r"/api/v2/log-streams/([^/]+)", ("read:log_streams",),
     lambda f, m, q, b, s: f.get_stream(m[0])),
    ("PATCH", r"/api/v2/log-streams/([^/]+)", ("update:log_streams",),
     lambda f, m, q, b, s: f.patch_stream(m[0], b)),
    ("GET", r"/api/v2/clients", ("read:clients", "read:client_keys"),
     lambda f, m, q, b, s: f.list_clients(q, s)),
    ("POST", r"/api/v2/clients", ("create:clients",),
     lambda f, m, q, b, s: f.create_client(b)),
    ("GET", r"/api/v2/clients/([^/]+)", ("read:clients", "read:client_keys"),
     lambda f, m, q, b, s: (200, f.client_view(f.find_client(m[0]), s, q))),
    ("PATCH", r"/api/v2/clients/([^/]+)", ("update:clients",),
     lambda f, m, q, b, s: f.patch_client(m[0], b)),
    ("GET", r"/api/v2/client-grants", ("read:client_grants",),
     lambda f, m, q, b, s: f.list_grants(q)),
    ("POST", r"/api/v2/client-grants", ("create:client_grants",),
     lambda f, m, q, b, s: f.create_grant(b)),
    ("PATCH", r"/api/v2/client-grants/([^/]+)", ("update:client_grants",),
     lambda f, m, q, b, s: f.patch_grant(m[0], b)),
)


class _AdminHandler(_Handler):
    """The admin routes; everything else goes to fake_auth0's handler."""

    def route(self, method):
        url = urllib.parse.urlsplit(self.path)
        path = urllib.parse.unquote(url.path)
        if method == "POST" and path == "/oauth/token":
            return self.token_request()
        for m, pattern, scopes, fn in ROUTES:
            match = re.fullmatch(pattern, path)
            if m == method and match:
                return self.admin(match.groups(), scopes, fn,
                                  urllib.parse.parse_qs(url.query))
        if path.startswith("/api/v2/") and \
                not path.startswith(("/api/v2/logs", "/api/v2/users/")):
            self.read_body()
            self.answer(404, {"statusCode": 404, "error": "Not Found",
                              "message": "no route %s %s" % (method, path)})
            return True
        return False

    def read_body(self):
        n = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(n) if n else b""
        self.record(body)
        return body

    def token_request(self):
        body = self.read_body()
        if self.run_script():
            return True
        status, answer = self.fake.issue(
            urllib.parse.parse_qs(body.decode()))
        self.answer(status, answer)
        return True

    def admin(self, groups, scopes, fn, query):
        raw = self.read_body()
        if self.run_script():
            return True
        have = self.fake.scopes_of(self.headers.get("Authorization"))
        if have is None:
            self.answer(401, {"statusCode": 401, "error": "Unauthorized",
                              "message": "Invalid token"})
            return True
        if not set(scopes) & have:
            self.answer(403, {"statusCode": 403, "error": "Forbidden",
                              "message": "Insufficient scope, expected any "
                              "of: " + ",".join(scopes),
                              "errorCode": "insufficient_scope"})
            return True
        try:
            body = json.loads(raw) if raw else None
            with self.fake.lock:
                status, answer = fn(self.fake, groups, query, body, have)
        except HttpError as e:
            status, answer = e.status, e.body
        except ValueError:
            status, answer = 400, {"statusCode": 400, "error": "Bad Request",
                                   "message": "Invalid JSON"}
        self.answer(status, answer)
        return True

    def do_GET(self):
        if not self.route("GET"):
            super().do_GET()

    def do_POST(self):
        if not self.route("POST"):
            super().do_POST()

    def do_DELETE(self):
        if not self.route("DELETE"):
            super().do_DELETE()

    def do_PATCH(self):
        if not self.route("PATCH"):
            self.read_body()
            self.answer(404, {"error": "not_found"})

    def do_PUT(self):
        if not self.route("PUT"):
            self.read_body()
            self.answer(404, {"error": "not_found"})
