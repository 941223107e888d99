"""Authentication and authorization: accounts, passwords, machine tokens, the token service,
the access policy and throttling. No HTTP in here: the edge maps requests onto this API.

Wiring (start-up, blocking I/O allowed):

    keys = KeyRing.open(data_dir / "auth", issuer, clock)       # makes the first key
    issuer = TokenIssuer(keys, issuer_name, clock)               # access_ttl=300 s
    verifier = TokenVerifier(clock, own=keys, issuer=issuer_name, service=service,
                             trusted=[TrustedIssuer.from_certificate_bundle(iss, svc, path)])
    policy = Policy.parse(config["access"])                     # ConfigError: one line
    users = load_htpasswd(path)                                  # optional; ConfigError
    auth = Authenticator(store, policy, clock, realm="https://host/token", service=service,
                         issuer=issuer, verifier=verifier, htpasswd=users)

Per request (both dispatchers, one function):

    identity = await auth.authenticate(request.headers.get("Authorization"), remote_addr,
                                       client_cert_subject)
    if not auth.may(identity, "push", "team/app"):      # or allowed_actions(identity, repo)
        scope = auth.scope_for("team/app", ["pull", "push"])
        if identity.authenticated:   403 DENIED, WWW-Authenticate:
            auth.challenge([scope], error="insufficient_scope")
        else:                        401 UNAUTHORIZED, WWW-Authenticate: auth.challenge([scope])
    await auth.record("push", identity, remote_addr, "success", repository=..., reference=...)

The token service (realm):

    GET  /token:  await auth.basic_token_response(authorization, remote_addr,
                      service=q.get("service"), scopes=q.getlist("scope"),
                      offline_token=q.get("offline_token") == "true")   -> JSON dict
    POST /token:  await auth.oauth_token(form_dict, remote_addr)        -> JSON dict
    JWKS:         keys.jwks();  certificate bundle for Distribution: keys.certificate_bundle()

Revocations (regd.auth.revocation): `auth.revocations` is this process's copy of what was
revoked; `authenticate` and `login` consult it, and a process that revokes something calls
`auth.revocations.expire()` so its own copy is read again at once.

Errors (regd.auth.errors), all subclasses of AuthError(RegdError):
    Unauthenticated -> 401 UNAUTHORIZED with auth.challenge(scope, error=exc.error)
    Forbidden       -> 403 DENIED (InvalidScope: a malformed scope or more than 64)
    Throttled       -> 429 TOOMANYREQUESTS with Retry-After: exc.retry_after
    MetadataError (BackendError) from the database -> 503 as everywhere.

Accounts and machine tokens are managed with regd.metadata.accounts (rows),
regd.auth.passwords.hash_password and regd.auth.machine.create_machine_token.
"""

from regd.auth.authenticator import Authenticator, Login
from regd.auth.errors import AuthError, Forbidden, InvalidScope, Throttled, Unauthenticated
from regd.auth.identity import ANONYMOUS, Identity, Via
from regd.auth.keys import KeyRing, SigningKey, libtrust_kid
from regd.auth.machine import create_machine_token
from regd.auth.passwords import (
    CredentialCache,
    PasswordError,
    hash_password,
    load_htpasswd,
    verify_password,
)
from regd.auth.policy import Policy
from regd.auth.revocation import Revocations
from regd.auth.scopes import MAX_SCOPES, Scope, parse_scope, parse_scopes
from regd.auth.throttle import LoginThrottle
from regd.auth.tokens import TokenClaims, TokenIssuer, TokenVerifier, TrustedIssuer

__all__ = [
    "ANONYMOUS",
    "MAX_SCOPES",
    "AuthError",
    "Authenticator",
    "CredentialCache",
    "Forbidden",
    "Identity",
    "InvalidScope",
    "KeyRing",
    "Login",
    "LoginThrottle",
    "PasswordError",
    "Policy",
    "Revocations",
    "Scope",
    "SigningKey",
    "Throttled",
    "TokenClaims",
    "TokenIssuer",
    "TokenVerifier",
    "TrustedIssuer",
    "Unauthenticated",
    "Via",
    "create_machine_token",
    "hash_password",
    "libtrust_kid",
    "load_htpasswd",
    "parse_scope",
    "parse_scopes",
    "verify_password",
]
