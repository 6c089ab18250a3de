-- shipyard:contract
-- Contract: release v1 reads products.legacy_code, so this breaks v1. Release v2 no longer
-- reads it; shipyard holds this migration back until no v1 instance runs and the rollback
-- window is closed (`shipyard db contract shop`).
ALTER TABLE products DROP COLUMN legacy_code;
