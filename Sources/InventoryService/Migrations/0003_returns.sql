-- InventoryService, migration 0003: returns. A paid order cancelled before it
-- shipped gives its committed units back: the reservation becomes 'returned'
-- and a 'return' movement puts them back on hand (reserved unchanged).

ALTER TABLE stock_movements DROP CONSTRAINT stock_movements_kind_check;
ALTER TABLE stock_movements ADD CONSTRAINT stock_movements_kind_check
  CHECK (kind IN ('adjustment', 'reservation', 'release', 'commit', 'return'));

ALTER TABLE stock_movements DROP CONSTRAINT stock_movements_delta_signs;
ALTER TABLE stock_movements ADD CONSTRAINT stock_movements_delta_signs CHECK (CASE kind
  WHEN 'adjustment' THEN reserved_delta = 0 AND CASE reason
    WHEN 'restock' THEN on_hand_delta >= 0
    WHEN 'return' THEN on_hand_delta >= 0
    WHEN 'damage' THEN on_hand_delta <= 0
    ELSE true END
  WHEN 'reservation' THEN on_hand_delta = 0 AND reserved_delta > 0
  WHEN 'release' THEN on_hand_delta = 0 AND reserved_delta < 0
  WHEN 'commit' THEN on_hand_delta < 0 AND reserved_delta = on_hand_delta
  WHEN 'return' THEN on_hand_delta > 0 AND reserved_delta = 0
  ELSE false END);

ALTER TABLE reservations DROP CONSTRAINT reservations_status_check;
ALTER TABLE reservations ADD CONSTRAINT reservations_status_check
  CHECK (status IN ('active', 'released', 'committed', 'returned'));
