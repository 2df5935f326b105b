import DynamicJSON
import Foundation

/// A verified success reply, decoded by key: bunq's `Response` items as (type, object) pairs in order.
struct BunqReply: Sendable {
    let items: [(type: String, object: JSONObject)]
    let responseId: String?

    /// The first item of `type`; a missing one is a protocol error naming the type.
    func require(_ type: String, endpoint: String) throws(BunqAPIError) -> JSONObject {
        guard let item = items.first(where: { $0.type == type }) else {
            throw BunqAPIError(.protocolError, endpoint: endpoint, status: 200,
                               message: "the reply has no \(type) item (has: \(items.map(\.type).joined(separator: ", ")))",
                               responseId: responseId)
        }
        return item.object
    }
}

/// A decoded JSON object with typed accessors that throw protocol errors naming the missing field.
struct JSONObject: Sendable {
    let raw: [String: JSONValue]
    let context: String

    init(_ raw: [String: JSONValue], context: String) {
        self.raw = raw
        self.context = context
    }

    func string(_ key: String) throws(BunqAPIError) -> String {
        guard let value = raw[key]?.string else { throw missing(key, "a string") }
        return value
    }

    func int(_ key: String) throws(BunqAPIError) -> Int {
        guard let value = raw[key]?.integer else { throw missing(key, "an integer") }
        return value
    }

    func object(_ key: String) throws(BunqAPIError) -> JSONObject {
        guard let value = raw[key]?.object else { throw missing(key, "an object") }
        return JSONObject(value, context: "\(context).\(key)")
    }

    func objects(_ key: String) -> [JSONObject] {
        (raw[key]?.array ?? []).compactMap(\.object).map { JSONObject($0, context: "\(context).\(key)") }
    }

    /// The single `{Type: {...}}` member of an anchor object such as `requested_by_user`.
    func anchored() throws(BunqAPIError) -> (type: String, object: JSONObject) {
        guard raw.count == 1, let (type, value) = raw.first, let object = value.object else {
            throw BunqAPIError(.protocolError, endpoint: context, message: "\(context) is not a one-key typed object")
        }
        return (type, JSONObject(object, context: "\(context).\(type)"))
    }

    func timestamp(_ key: String) throws(BunqAPIError) -> Date {
        let text = try string(key)
        guard let date = BunqTimestamp.parse(text) else { throw missing(key, "a bunq timestamp") }
        return date
    }

    private func missing(_ key: String, _ what: String) -> BunqAPIError {
        BunqAPIError(.protocolError, endpoint: context, message: "\(context).\(key) is missing or not \(what)")
    }
}

/// bunq's timestamps: UTC `YYYY-MM-DD hh:mm:ss.ssssss`.
public enum BunqTimestamp {
    public static func parse(_ text: String) -> Date? {
        let parts = text.split(whereSeparator: { $0 == " " || $0 == "-" || $0 == ":" })
        guard parts.count == 6, let year = Int(parts[0]), let month = Int(parts[1]), let day = Int(parts[2]),
              let hour = Int(parts[3]), let minute = Int(parts[4]), let seconds = Double(parts[5]),
              (1...12).contains(month), (1...31).contains(day), (0...23).contains(hour), (0...59).contains(minute),
              (0..<61).contains(seconds) else { return nil }
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = TimeZone(identifier: "UTC")!
        guard let base = calendar.date(from: DateComponents(year: year, month: month, day: day, hour: hour,
                                                            minute: minute)) else { return nil }
        return base.addingTimeInterval(seconds)
    }
}
