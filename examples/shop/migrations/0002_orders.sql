-- Orders written by POST /orders. The foreign key is created with the table, so there is
-- nothing to validate and products is locked only for the moment the constraint is added.
CREATE TABLE orders (
    id bigserial PRIMARY KEY,
    product_id bigint NOT NULL REFERENCES products (id),
    quantity int NOT NULL CHECK (quantity > 0),
    total numeric(12, 2) NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
