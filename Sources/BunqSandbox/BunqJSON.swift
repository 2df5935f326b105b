import Foundation

/// A JSON value that keeps object members in the order written, serialized the way bunq emits it: compact, with
/// `/` escaped as `\/`.
///
/// Foundation's encoders do not promise member order, and bunq's clients depend on it (the official SDKs read
/// `Id`, `Token`, `ServerPublicKey` by position), so the emulator writes its replies with this instead.
indirect enum BunqJSON: Sendable, Equatable, ExpressibleByStringLiteral, ExpressibleByIntegerLiteral,
    ExpressibleByBooleanLiteral, ExpressibleByArrayLiteral, ExpressibleByNilLiteral {
    case string(String)
    case int(Int)
    case double(Double)
    case bool(Bool)
    case null
    case array([BunqJSON])
    case object([(String, BunqJSON)])

    init(stringLiteral value: String) { self = .string(value) }
    init(integerLiteral value: Int) { self = .int(value) }
    init(booleanLiteral value: Bool) { self = .bool(value) }
    init(arrayLiteral elements: BunqJSON...) { self = .array(elements) }
    init(nilLiteral: ()) { self = .null }

    static func == (lhs: BunqJSON, rhs: BunqJSON) -> Bool {
        lhs.serialized == rhs.serialized
    }

    /// `{"Response":[{Type:{...}}, ...]}`: bunq's success envelope.
    static func response(_ items: [(String, BunqJSON)], pagination: BunqJSON? = nil) -> BunqJSON {
        var members: [(String, BunqJSON)] = [("Response", .array(items.map { .object([$0]) }))]
        if let pagination { members.append(("Pagination", pagination)) }
        return .object(members)
    }

    /// `{"Error":[{"error_description":..,"error_description_translated":..}]}`: bunq's error envelope.
    static func error(_ description: String) -> BunqJSON {
        .object([("Error", .array([.object([
            ("error_description", .string(description)),
            ("error_description_translated", .string(description)),
        ])]))])
    }

    var serialized: [UInt8] {
        var out: [UInt8] = []
        write(to: &out)
        return out
    }

    private func write(to out: inout [UInt8]) {
        switch self {
        case .string(let value): Self.writeString(value, to: &out)
        case .int(let value): out.append(contentsOf: String(value).utf8)
        case .double(let value): out.append(contentsOf: String(value).utf8)
        case .bool(let value): out.append(contentsOf: (value ? "true" : "false").utf8)
        case .null: out.append(contentsOf: "null".utf8)
        case .array(let values):
            out.append(UInt8(ascii: "["))
            for (index, value) in values.enumerated() {
                if index > 0 { out.append(UInt8(ascii: ",")) }
                value.write(to: &out)
            }
            out.append(UInt8(ascii: "]"))
        case .object(let members):
            out.append(UInt8(ascii: "{"))
            for (index, (key, value)) in members.enumerated() {
                if index > 0 { out.append(UInt8(ascii: ",")) }
                Self.writeString(key, to: &out)
                out.append(UInt8(ascii: ":"))
                value.write(to: &out)
            }
            out.append(UInt8(ascii: "}"))
        }
    }

    private static func writeString(_ value: String, to out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        for byte in value.utf8 {
            switch byte {
            case UInt8(ascii: "\""): out.append(contentsOf: #"\""#.utf8)
            case UInt8(ascii: "\\"): out.append(contentsOf: #"\\"#.utf8)
            case UInt8(ascii: "/"): out.append(contentsOf: #"\/"#.utf8)
            case 0x0A: out.append(contentsOf: #"\n"#.utf8)
            case 0x0D: out.append(contentsOf: #"\r"#.utf8)
            case 0x09: out.append(contentsOf: #"\t"#.utf8)
            case 0..<0x20: out.append(contentsOf: String(format: "\\u%04x", byte).utf8)
            default: out.append(byte)
            }
        }
        out.append(UInt8(ascii: "\""))
    }
}

/// bunq's timestamp format: UTC, `YYYY-MM-DD hh:mm:ss.ssssss`.
enum BunqTime {
    static func format(_ date: Date) -> String {
        let seconds = date.timeIntervalSince1970
        var whole = time_t(seconds.rounded(.down))
        let micros = Int(((seconds - Double(whole)) * 1_000_000).rounded(.down))
        var parts = tm()
        gmtime_r(&whole, &parts)
        return String(format: "%04d-%02d-%02d %02d:%02d:%02d.%06d", Int(parts.tm_year) + 1900, Int(parts.tm_mon) + 1,
                      Int(parts.tm_mday), Int(parts.tm_hour), Int(parts.tm_min), Int(parts.tm_sec), micros)
    }
}
