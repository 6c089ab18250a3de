-- Expand: a nullable column without a default is a catalog-only change (no rewrite, no scan),
-- and the release running now never names it, so it keeps working. Release v2 writes it
-- (order_note_column = "note").
ALTER TABLE orders ADD COLUMN note text;
