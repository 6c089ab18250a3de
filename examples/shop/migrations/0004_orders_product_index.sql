-- shipyard:no-transaction
-- Expand: CONCURRENTLY builds the index while orders keeps taking writes; PostgreSQL refuses
-- it inside a transaction block, hence the mark above.
CREATE INDEX CONCURRENTLY orders_product_id_idx ON orders (product_id);
