import DynamicJSON

/// An amount of money in cents. bunq writes amounts as decimal strings with two places ("12.50", "-3.00"), never
/// as JSON numbers; so does the emulator, and it never goes through a floating-point value.
struct Money: Sendable, Hashable, Comparable {
    var cents: Int64

    init(cents: Int64) {
        self.cents = cents
    }

    /// bunq's `Amount.value` as a request writes it: digits with at most two decimals ("100", "12.5", "12.50"),
    /// optionally signed; nil for anything else (exponents, spaces, more decimals, beyond a trillion).
    init?(value: String) {
        var text = Substring(value)
        let negative = text.first == "-"
        if negative { text = text.dropFirst() }
        let parts = text.split(separator: ".", maxSplits: 1, omittingEmptySubsequences: false)
        guard let whole = parts.first, !whole.isEmpty, whole.count <= 12, whole.allSatisfy(\.isASCIIDigitCharacter)
        else { return nil }
        var fraction = parts.count == 2 ? parts[1] : "00"
        guard (1...2).contains(fraction.count), fraction.allSatisfy(\.isASCIIDigitCharacter) else { return nil }
        if fraction.count == 1 { fraction += "0" }
        guard let units = Int64(whole), let hundredths = Int64(fraction) else { return nil }
        cents = (units * 100 + hundredths) * (negative ? -1 : 1)
    }

    static let zero = Money(cents: 0)

    /// "12.50", "-3.00".
    var value: String {
        let magnitude = cents.magnitude
        let fraction = magnitude % 100
        return (cents < 0 ? "-" : "") + "\(magnitude / 100)." + (fraction < 10 ? "0" : "") + "\(fraction)"
    }

    /// bunq's `Amount` object in euros: `{"value": "12.50", "currency": "EUR"}`.
    var json: BunqJSON { .object([("value", .string(value)), ("currency", .string(Money.currency))]) }

    /// Every sandbox account is in euros.
    static let currency = "EUR"

    static func < (lhs: Money, rhs: Money) -> Bool { lhs.cents < rhs.cents }
    static func + (lhs: Money, rhs: Money) -> Money { Money(cents: lhs.cents + rhs.cents) }
    static func - (lhs: Money, rhs: Money) -> Money { Money(cents: lhs.cents - rhs.cents) }
    static prefix func - (amount: Money) -> Money { Money(cents: -amount.cents) }

    /// A request's `Amount` member (`field`, e.g. `amount` or `entries[2].amount`): an object with a positive
    /// `value` of at most two decimals and `currency` EUR; else a 400 naming the field.
    static func parse(_ json: JSONValue?, field: String) throws(SandboxError) -> Money {
        guard let object = json?.object else { throw .badRequest("Field \(field) is required: {\"value\", \"currency\"}.") }
        guard let text = object["value"]?.string, let amount = Money(value: text) else {
            throw .badRequest("Field \(field).value must be a decimal string with at most two decimals, e.g. \"12.50\".")
        }
        guard amount > .zero else { throw .badRequest("Field \(field).value must be bigger than 0.") }
        guard let currency = object["currency"]?.string else { throw .badRequest("Field \(field).currency is required.") }
        guard currency == Money.currency else {
            throw .badRequest("Currency \(currency) is not supported for this monetary account: use \(Money.currency).")
        }
        return amount
    }
}

private extension Character {
    var isASCIIDigitCharacter: Bool { ("0"..."9").contains(self) }
}
