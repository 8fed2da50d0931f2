-- Second factors and the audit trail. Factors are keyed by user name, so
-- users of the users file (read-only seed entries) can enrol them too;
-- deleting a directory user deletes its factors in the same transaction.

-- One TOTP authenticator per user (RFC 6238). `last_step` is the newest
-- time step a code was accepted for: a code is good once.
CREATE TABLE totp_credentials (
    username TEXT PRIMARY KEY,
    secret TEXT NOT NULL,
    last_step BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);

-- Single-use recovery codes, as SHA-256 digests (each is 80 random bits:
-- a slow hash adds nothing).
CREATE TABLE recovery_codes (
    username TEXT NOT NULL,
    code_hash TEXT NOT NULL,
    used_at BIGINT,
    PRIMARY KEY (username, code_hash)
);

-- WebAuthn credentials (passkeys): the credential as webauthn-rs keeps it
-- (public key, counter, backup state), as JSON.
CREATE TABLE passkeys (
    credential_id TEXT PRIMARY KEY,
    username TEXT NOT NULL,
    name TEXT NOT NULL,
    passkey TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    last_used_at BIGINT
);
CREATE INDEX passkeys_by_user ON passkeys (username);

-- Who did what, newest last; `id` sorts by time (microseconds, then a
-- random suffix), which keyset paging uses.
CREATE TABLE audit_events (
    id TEXT PRIMARY KEY,
    at BIGINT NOT NULL,
    event TEXT NOT NULL,
    subject TEXT,
    actor TEXT,
    client_id TEXT,
    details TEXT NOT NULL
);
CREATE INDEX audit_by_subject ON audit_events (subject, id);
CREATE INDEX audit_by_event ON audit_events (event, id);
