-- An admin may require a new password at the next sign-in (a temporary
-- password, or after a suspected leak).
ALTER TABLE users ADD COLUMN password_change_required BIGINT NOT NULL DEFAULT 0;
