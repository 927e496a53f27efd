// JIT Redis ACL users, written in JavaScript: the same contract and behaviour as the
// Rust `redis` connector, to show (and test) that connectors need not be Rust.
// Built with jco componentize against `wit/` (see scripts/build-js-connector.sh).

import { get as setting } from "ebb:connector/config@0.1.0";
import { command as redisCommand, authProbe } from "ebb:connector/redis@0.1.0";

const DEFAULT_COMMANDS = "get, mget, exists, ttl, hget, hgetall, lrange, smembers";
const ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";

const fail = (tag, val) => ({ tag, val });

function listed(key, fallback) {
  return (setting(key) ?? fallback)
    .split(",")
    .map((s) => s.trim().toLowerCase())
    .filter((s) => s.length > 0);
}

const connection = () => setting("connection") ?? "main";

// A Redis command through the host, its failures as the contract's errors.
function call(...args) {
  try {
    return redisCommand(connection(), args);
  } catch (e) {
    const failure = e.payload ?? e;
    if (failure.tag === "unavailable") throw fail("unavailable", `redis unavailable: ${failure.val}`);
    if (failure.tag === "rejected") throw fail("denied", `redis rejected the command: ${failure.val}`);
    throw fail("internal", `redis: ${failure.val ?? String(e)}`);
  }
}

function userName(grantId) {
  if (!/^[A-Za-z0-9-]{1,100}$/.test(grantId)) {
    throw fail("invalid", `grant id \`${grantId}\` cannot name a Redis user`);
  }
  return `ebb_${grantId.toLowerCase()}`;
}

const within = (pattern, allowed) =>
  allowed.endsWith("*") ? pattern.startsWith(allowed.slice(0, -1)) : pattern === allowed;

function checked(permissions) {
  if (permissions.length === 0) throw fail("invalid", "a grant needs at least one permission");
  const commands = listed("allowed-commands", DEFAULT_COMMANDS);
  const keys = listed("allowed-keys", "");
  return permissions.map((p) => {
    const command = p.action.toLowerCase();
    if (!commands.includes(command)) {
      throw fail("invalid", `unknown command \`${p.action}\`; this connector grants ${commands.join(", ")}`);
    }
    const pattern = p.resource.trim();
    if (!/^[A-Za-z0-9:_\-./*]+$/.test(pattern)) {
      throw fail("invalid", `\`${p.resource}\` is not a key pattern (use letters, digits, \`:_-./\` and \`*\`)`);
    }
    if (pattern.replace(/\*+$/, "").includes("*")) {
      throw fail("invalid", `\`${pattern}\`: \`*\` only at the end of a key pattern`);
    }
    if (!keys.some((allowed) => within(pattern, allowed))) {
      throw fail("invalid", `\`${pattern}\` is not within this connector's allowed-keys`);
    }
    return [command, pattern];
  });
}

function password() {
  const limit = 256 - (256 % ALPHABET.length);
  let out = "";
  while (out.length < 40) {
    for (const b of crypto.getRandomValues(new Uint8Array(64))) {
      if (b < limit && out.length < 40) out += ALPHABET[b % ALPHABET.length];
    }
  }
  return out;
}

const passwordOf = (credential) => credential.fields.find((f) => f.name === "password")?.value ?? "";

function authenticates(user, pass) {
  try {
    return authProbe(connection(), user, pass).tag === "accepted";
  } catch (e) {
    throw fail("unavailable", `redis unavailable: ${(e.payload ?? e).val ?? String(e)}`);
  }
}

export const connector = {
  describe() {
    return {
      name: "redis",
      version: "0.2.0-js",
      system: "redis",
      description: "Per-grant Redis ACL users (JavaScript)",
      actions: listed("allowed-commands", DEFAULT_COMMANDS).map((c) => ({
        name: c,
        description: `run ${c.toUpperCase()} on the granted keys`,
        resourceSyntax: "a key pattern within allowed-keys, e.g. cache:*",
      })),
      capabilities: {
        revocable: true,
        downstreamExpiry: false,
        terminatesSessions: true,
        canVerify: true,
        canVerifyIssued: true,
        reportsStandingAccess: false,
      },
    };
  },

  validate(permissions) {
    checked(permissions);
  },

  inventory() {
    const listing = call("ACL", "USERS");
    const names = listing.tag === "array" ? listing.val : [];
    return names
      .filter((name) => name.startsWith("ebb_"))
      .map((name) => ({ grantId: name.slice(4).toUpperCase(), detail: `ACL user ${name}`, location: undefined }));
  },

  issue(grant) {
    const rules = checked(grant.permissions);
    const user = userName(grant.id);
    const pass = password();
    const args = ["ACL", "SETUSER", user, "reset", "on", `>${pass}`, "-@all", "resetchannels"];
    for (const [command, pattern] of rules) args.push(`+${command}`, `~${pattern}`);
    call(...args);
    return {
      handle: `user=${user}`,
      credential: { fields: [{ name: "user", value: user }, { name: "password", value: pass }] },
      expiresAt: undefined,
    };
  },

  revoke(grant, _handle, _credential) {
    call("ACL", "DELUSER", userName(grant.id));
  },

  verifyRevoked(grant, _handle, credential) {
    const user = userName(grant.id);
    const residue = [];
    if (call("ACL", "GETUSER", user).tag !== "nil") {
      residue.push({ kind: "entitlement-present", detail: `ACL user ${user} still exists`, location: undefined, remedy: undefined });
    }
    const listing = call("CLIENT", "LIST");
    const text = listing.tag === "text" || listing.tag === "status" ? listing.val : "";
    const open = text.split("\n").filter((l) => ` ${l} `.includes(` user=${user} `)).length;
    if (open > 0) {
      residue.push({ kind: "session-open", detail: `${open} connection(s) of ${user} still open`, location: undefined, remedy: undefined });
    }
    if (credential !== undefined && authenticates(user, passwordOf(credential))) {
      residue.push({
        kind: "credential-accepted",
        detail: `AUTH as ${user} with the issued password still succeeds`,
        location: undefined,
        remedy: undefined,
      });
    }
    return residue.length > 0 ? { tag: "residual", val: residue } : { tag: "revoked" };
  },

  verifyIssued(grant, _handle, credential) {
    if (!authenticates(userName(grant.id), passwordOf(credential))) {
      throw fail("unavailable", "the new user cannot authenticate yet");
    }
  },

  standingAccess(_subject) {
    throw fail("unsupported", "Redis ACL users carry no subject; standing access is not reported");
  },
};
