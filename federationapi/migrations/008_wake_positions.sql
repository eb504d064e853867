-- Positions of the federation API's wake-ups between processes (split
-- mode, wakes.go): each wake-up raises its stream's row by one in a
-- write transaction, so positions are taken in commit order and a
-- process that hears position N reads everything committed before
-- the wake-ups up to N.
CREATE TABLE federation_wake_positions (
    stream TEXT PRIMARY KEY,
    pos BIGINT NOT NULL
);
