import ProductService

/// The catalog `mart seed demo` loads: a small general store, so that a newcomer browsing /docs
/// finds categories, products at several prices and stock to order. SKUs are stable: they are
/// how a second run recognises what the first one made.
enum DemoCatalog {
  typealias Item = (sku: String, name: String, description: String, priceMinor: Int64, brand: String, stock: Int64)

  static let currency = "USD"

  static let sections: [(name: String, slug: String, description: String, items: [Item])] = [
    (
      "Pantry", "pantry", "Dry goods, coffee and tea.",
      [
        (
          "DEMO-PAN-001", "Arabica coffee beans, 1 kg", "Medium roast whole beans from Colombia.", 1899, "Hillside", 120
        ),
        ("DEMO-PAN-002", "Green tea, 50 bags", "Japanese sencha in biodegradable bags.", 549, "Kettle & Leaf", 200),
        ("DEMO-PAN-003", "Extra virgin olive oil, 750 ml", "Cold-pressed, from Andalusian olives.", 1249, "Olivar", 80),
        ("DEMO-PAN-004", "Basmati rice, 2 kg", "Aged long-grain rice.", 699, "Himal", 150),
        ("DEMO-PAN-005", "Dark chocolate 85%, 100 g", "Single-origin cacao from Ecuador.", 349, "Cacao Norte", 300),
        ("DEMO-PAN-006", "Rolled oats, 1 kg", "Whole-grain oats for porridge and baking.", 299, "Morning Mill", 180),
        ("DEMO-PAN-007", "Wildflower honey, 500 g", "Raw, unfiltered honey.", 899, "Bee Kind", 60),
        ("DEMO-PAN-008", "Spaghetti, 500 g", "Bronze-cut durum wheat pasta.", 249, "Trafila", 250),
        ("DEMO-PAN-009", "Sea salt flakes, 250 g", "Hand-harvested flaky salt.", 599, "Tidewater", 90),
      ]
    ),
    (
      "Kitchen", "kitchen", "Cookware and tools.",
      [
        ("DEMO-KIT-001", "Cast-iron skillet, 26 cm", "Pre-seasoned; works on every hob.", 3999, "Forge & Co", 40),
        ("DEMO-KIT-002", "Chef's knife, 20 cm", "Stainless steel, full tang.", 5999, "Kanto", 25),
        ("DEMO-KIT-003", "Bamboo cutting board", "Large, with a juice groove.", 2499, "Grove", 60),
        ("DEMO-KIT-004", "French press, 1 l", "Borosilicate glass, steel frame.", 2999, "Hillside", 35),
        ("DEMO-KIT-005", "Silicone spatula set", "Three sizes, heat-safe to 260 °C.", 1299, "Flex", 100),
        ("DEMO-KIT-006", "Digital kitchen scale", "1 g precision up to 5 kg.", 1999, "Gram", 45),
        ("DEMO-KIT-007", "Enamel dutch oven, 5 l", "For stews, bread and braises.", 8999, "Forge & Co", 15),
        ("DEMO-KIT-008", "Stainless mixing bowls", "Nesting set of three.", 2299, "Flex", 50),
      ]
    ),
    (
      "Home", "home", "Things that make a home.",
      [
        ("DEMO-HOM-001", "Linen bed sheet set, double", "Stonewashed European linen.", 11999, "Flaxen", 20),
        ("DEMO-HOM-002", "Scented candle, cedar", "Soy wax, 50 hours of burn.", 2199, "Ember", 70),
        ("DEMO-HOM-003", "Wool throw blanket", "Merino wool, 130 × 170 cm.", 7999, "Fold", 30),
        ("DEMO-HOM-004", "Ceramic plant pot, 20 cm", "Glazed, with a drainage hole.", 1899, "Terra", 55),
        ("DEMO-HOM-005", "Bath towel, cotton", "600 gsm Turkish cotton.", 2499, "Fold", 90),
        ("DEMO-HOM-006", "Desk lamp, LED", "Dimmable, warm to cool white.", 4599, "Lumen", 40),
        ("DEMO-HOM-007", "Wall clock, oak", "Silent sweep movement.", 3499, "Tick", 25),
        ("DEMO-HOM-008", "Storage baskets, set of 3", "Woven seagrass.", 3299, "Grove", 35),
        ("DEMO-HOM-009", "Doormat, coir", "Natural coconut fibre, 60 × 40 cm.", 1999, "Terra", 4),
      ]
    ),
    (
      "Electronics", "electronics", "Gadgets and accessories.",
      [
        ("DEMO-ELE-001", "Wireless earbuds", "Noise-cancelling, 24 h with the case.", 7999, "Sonar", 50),
        ("DEMO-ELE-002", "USB-C charger, 65 W", "Charges a laptop and a phone at once.", 3999, "Volt", 120),
        ("DEMO-ELE-003", "Portable power bank, 10 000 mAh", "Slim, with fast charging.", 2999, "Volt", 80),
        ("DEMO-ELE-004", "Mechanical keyboard", "Hot-swappable switches, backlit.", 9999, "Clack", 20),
        ("DEMO-ELE-005", "Wireless mouse", "Silent clicks, two-year battery.", 2499, "Clack", 75),
        ("DEMO-ELE-006", "Bluetooth speaker", "Waterproof, 12 h of play.", 5999, "Sonar", 30),
        ("DEMO-ELE-007", "HDMI cable, 2 m", "Supports 4K at 120 Hz.", 1299, "Volt", 200),
        ("DEMO-ELE-008", "Webcam, 1080p", "Autofocus, with a privacy shutter.", 4999, "Lumen", 3),
      ]
    ),
    (
      "Outdoors", "outdoors", "For the garden and the trail.",
      [
        ("DEMO-OUT-001", "Insulated water bottle, 750 ml", "Keeps drinks cold for 24 hours.", 2999, "Summit", 110),
        ("DEMO-OUT-002", "Daypack, 22 l", "Recycled nylon, padded straps.", 6999, "Summit", 30),
        ("DEMO-OUT-003", "Camping headlamp", "350 lumens, rechargeable.", 3499, "Lumen", 60),
        ("DEMO-OUT-004", "Garden gloves", "Breathable, with grip palms.", 1499, "Terra", 90),
        ("DEMO-OUT-005", "Folding camp chair", "Holds 120 kg, packs small.", 4999, "Basecamp", 25),
        ("DEMO-OUT-006", "Picnic blanket", "Water-resistant backing, 200 × 150 cm.", 3999, "Basecamp", 35),
        ("DEMO-OUT-007", "Pruning shears", "Bypass blades, steel.", 2299, "Terra", 45),
        ("DEMO-OUT-008", "Trekking poles, pair", "Carbon, adjustable.", 8999, "Summit", 2),
      ]
    ),
    (
      "Books", "books", "Reading for the kitchen and beyond.",
      [
        ("DEMO-BOO-001", "The Bread Book", "Sourdough and yeasted loaves, step by step.", 2999, "Crumb Press", 40),
        ("DEMO-BOO-002", "Weeknight Vegetables", "Forty quick vegetable dinners.", 2499, "Crumb Press", 50),
        ("DEMO-BOO-003", "A Field Guide to Birds", "Every common bird, with drawings.", 1999, "Northlight", 30),
        ("DEMO-BOO-004", "The Small Garden", "Growing food on a balcony.", 2199, "Northlight", 35),
        ("DEMO-BOO-005", "Coffee at Home", "Brewing methods compared.", 1799, "Crumb Press", 60),
        ("DEMO-BOO-006", "Trails of the North", "Twenty day hikes with maps.", 2699, "Northlight", 25),
        ("DEMO-BOO-007", "Simple Woodworking", "Projects for a weekend.", 3199, "Northlight", 20),
        ("DEMO-BOO-008", "The Tea Companion", "Varieties, origins and brewing.", 1599, "Crumb Press", 5),
      ]
    ),
  ]

  /// The catalog in the product service's terms.
  static var categories: [ProductAdministration.CatalogCategory] {
    sections.map { section in
      .init(
        name: section.name, slug: section.slug, description: section.description,
        products: section.items.map {
          .init(
            sku: $0.sku, name: $0.name, description: $0.description, priceMinor: $0.priceMinor, currency: currency,
            brand: $0.brand)
        })
    }
  }

  /// How many units of each product the first run receives, by SKU. A few are low on purpose,
  /// so that low-stock alerts and OUT_OF_STOCK have something to show.
  static var stock: [String: Int64] {
    Dictionary(uniqueKeysWithValues: sections.flatMap(\.items).map { ($0.sku, $0.stock) })
  }
}
