-- The catalog of app/shop/catalog.json as a table. legacy_code is read by release v1 only
-- (product_legacy_column = "legacy_code"); 0005 drops it once v1 is gone.
CREATE TABLE products (
    id bigint PRIMARY KEY,
    name text NOT NULL,
    price numeric(10, 2) NOT NULL,
    legacy_code text
);

INSERT INTO products (id, name, price, legacy_code) VALUES
    (1, 'Deck chair', 49.00, 'DC-001'),
    (2, 'Ship in a bottle', 24.50, 'SB-002'),
    (3, 'Brass compass', 89.90, 'BC-003'),
    (4, 'Signal flags (set)', 35.00, 'SF-004'),
    (5, 'Rope, 20 m', 18.75, 'RP-005');
