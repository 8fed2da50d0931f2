-- Clients registered at run time (the admin API): the definition as JSON
-- (the config file's shape, the secret as its argon2id hash).
CREATE TABLE clients (
    client_id TEXT PRIMARY KEY,
    definition TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
