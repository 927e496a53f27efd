"""JIT Redis ACL users, written in Python: the same contract and behaviour as the
Rust `redis` connector, to show (and test) that connectors need not be Rust.

Built with componentize-py against `wit/` (see scripts/build-py-connector.sh).
"""

import secrets
import string

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import config, redis
from wit_world.imports.ebb_connector_types import (
    ActionInfo,
    Capabilities,
    ConnectorInfo,
    Credential,
    Error_Denied,
    Error_Internal,
    Error_Invalid,
    Error_Unavailable,
    Error_Unsupported,
    InventoryItem,
    Issued,
    Residue,
    ResidueKind,
    Secret,
    Verdict_Residual,
    Verdict_Revoked,
)

DEFAULT_COMMANDS = "get, mget, exists, ttl, hget, hgetall, lrange, smembers"
PATTERN_CHARS = set(string.ascii_letters + string.digits + ":_-./*")
ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789"


def setting(key, default):
    value = config.get(key)
    return default if value is None else value


def listed(key, default):
    return [s.strip().lower() for s in setting(key, default).split(",") if s.strip()]


def connection():
    return setting("connection", "main")


def call(*args):
    """A Redis command through the host, its failures as the contract's errors."""
    try:
        return redis.command(connection(), list(args))
    except Err as e:
        failure = e.value
        if isinstance(failure, redis.Error_Unavailable):
            raise Err(Error_Unavailable(f"redis unavailable: {failure.value}"))
        if isinstance(failure, redis.Error_Rejected):
            raise Err(Error_Denied(f"redis rejected the command: {failure.value}"))
        raise Err(Error_Internal(f"redis: {failure.value}"))


def user_name(grant_id):
    if not grant_id or len(grant_id) > 100 or not all(c.isalnum() or c == "-" for c in grant_id):
        raise Err(Error_Invalid(f"grant id `{grant_id}` cannot name a Redis user"))
    return "ebb_" + grant_id.lower()


def within(pattern, allowed):
    if allowed.endswith("*"):
        return pattern.startswith(allowed[:-1])
    return pattern == allowed


def checked(permissions):
    if not permissions:
        raise Err(Error_Invalid("a grant needs at least one permission"))
    commands = listed("allowed-commands", DEFAULT_COMMANDS)
    keys = listed("allowed-keys", "")
    rules = []
    for p in permissions:
        command = p.action.lower()
        if command not in commands:
            raise Err(Error_Invalid(f"unknown command `{p.action}`; this connector grants {', '.join(commands)}"))
        pattern = p.resource.strip()
        if not pattern or not set(pattern) <= PATTERN_CHARS:
            raise Err(Error_Invalid(f"`{p.resource}` is not a key pattern (use letters, digits, `:_-./` and `*`)"))
        if "*" in pattern.rstrip("*"):
            raise Err(Error_Invalid(f"`{pattern}`: `*` only at the end of a key pattern"))
        if not any(within(pattern, allowed) for allowed in keys):
            raise Err(Error_Invalid(f"`{pattern}` is not within this connector's allowed-keys"))
        rules.append((command, pattern))
    return rules


def password_of(credential):
    for field in credential.fields:
        if field.name == "password":
            return field.value
    return ""


def authenticates(user, password):
    try:
        outcome = redis.auth_probe(connection(), user, password)
    except Err as e:
        raise Err(Error_Unavailable(f"redis unavailable: {e.value.value}"))
    return isinstance(outcome, redis.AuthOutcome_Accepted)


class Connector(exports.Connector):
    def describe(self):
        actions = [
            ActionInfo(c, f"run {c.upper()} on the granted keys", "a key pattern within allowed-keys, e.g. cache:*")
            for c in listed("allowed-commands", DEFAULT_COMMANDS)
        ]
        return ConnectorInfo(
            name="redis",
            version="0.2.0-py",
            system="redis",
            description="Per-grant Redis ACL users (Python)",
            actions=actions,
            capabilities=Capabilities.REVOCABLE
            | Capabilities.TERMINATES_SESSIONS
            | Capabilities.CAN_VERIFY
            | Capabilities.CAN_VERIFY_ISSUED,
        )

    def validate(self, permissions):
        checked(permissions)

    def inventory(self):
        listing = call("ACL", "USERS")
        names = listing.value if isinstance(listing, redis.Reply_Array) else []
        return [
            InventoryItem(grant_id=name[len("ebb_"):].upper(), detail=f"ACL user {name}", location=None)
            for name in names
            if name.startswith("ebb_")
        ]

    def issue(self, grant):
        rules = checked(grant.permissions)
        user = user_name(grant.id)
        password = "".join(secrets.choice(ALPHABET) for _ in range(40))
        args = ["ACL", "SETUSER", user, "reset", "on", ">" + password, "-@all", "resetchannels"]
        for command, pattern in rules:
            args += ["+" + command, "~" + pattern]
        call(*args)
        return Issued(
            handle=f"user={user}",
            credential=Credential([Secret("user", user), Secret("password", password)]),
            expires_at=None,
        )

    def revoke(self, grant, handle, credential):
        call("ACL", "DELUSER", user_name(grant.id))

    def verify_revoked(self, grant, handle, credential):
        user = user_name(grant.id)
        residue = []
        if not isinstance(call("ACL", "GETUSER", user), redis.Reply_Nil):
            residue.append(Residue(ResidueKind.ENTITLEMENT_PRESENT, f"ACL user {user} still exists", None, None))
        listing = call("CLIENT", "LIST")
        text = listing.value if isinstance(listing, (redis.Reply_Text, redis.Reply_Status)) else ""
        open_ = sum(1 for line in text.splitlines() if f" user={user} " in f" {line} ")
        if open_:
            residue.append(Residue(ResidueKind.SESSION_OPEN, f"{open_} connection(s) of {user} still open", None, None))
        if credential is not None and authenticates(user, password_of(credential)):
            residue.append(
                Residue(
                    ResidueKind.CREDENTIAL_ACCEPTED,
                    f"AUTH as {user} with the issued password still succeeds",
                    None,
                    None,
                )
            )
        return Verdict_Residual(residue) if residue else Verdict_Revoked()

    def verify_issued(self, grant, handle, credential):
        user = user_name(grant.id)
        if not authenticates(user, password_of(credential)):
            raise Err(Error_Unavailable("the new user cannot authenticate yet"))

    def standing_access(self, subject):
        raise Err(Error_Unsupported("Redis ACL users carry no subject; standing access is not reported"))
