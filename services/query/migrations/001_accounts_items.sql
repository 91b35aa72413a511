-- 001: accounts and items of the board.
-- Usernames are unique regardless of case; items are found newest first by
-- id (keyset pagination) and by full-text search over title and body.

CREATE TABLE users (
    id         bigserial PRIMARY KEY,
    username   text NOT NULL CHECK (length(username) BETWEEN 3 AND 32),
    pw_hash    text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_username_key ON users (lower(username));

CREATE TABLE items (
    id         bigserial PRIMARY KEY,
    author_id  bigint NOT NULL REFERENCES users (id),
    title      text NOT NULL CHECK (length(title) BETWEEN 1 AND 200),
    body       text NOT NULL DEFAULT '' CHECK (length(body) <= 10000),
    created_at timestamptz NOT NULL DEFAULT now(),
    -- a retried create carries the same key and is applied once
    idem_key   text UNIQUE,
    search     tsvector GENERATED ALWAYS AS (
                   setweight(to_tsvector('english', title), 'A') ||
                   setweight(to_tsvector('english', body), 'B')) STORED
);
CREATE INDEX items_search_idx ON items USING gin (search);
CREATE INDEX items_author_idx ON items (author_id);
