/// The token path's reader: recognises the one request shape that arrives most, a plain `session.get`, straight
/// from the line's bytes, with no JSON tree, no `Any`, no Foundation.
///
/// It accepts only what it can read with certainty: one object with exactly the members `jsonrpc` ("2.0"), `id`
/// (an integer literal, a plain string or null), `method` ("session.get") and `params` (an object with exactly
/// `context`, a plain string), in any order, with JSON whitespace between tokens. A plain string here has no
/// escape and only printable ASCII. Anything else (an escape, a duplicate member, another member, a fraction, a
/// batch, trailing bytes) is not rejected but handed back as nil, for `RPCCodec.parse` to decide: the scanner
/// never gives an answer the full decoder would not.
public enum RPCScanner {
    /// A `session.get` read by the scanner.
    public struct SessionGet: Sendable, Equatable {
        public let id: RPCID
        public let context: String

        public init(id: RPCID, context: String) {
            self.id = id
            self.context = context
        }
    }

    /// The request on `line` when it is a plain `session.get`; nil: let the full decoder read it.
    public static func sessionGet(_ line: UnsafeRawBufferPointer) -> SessionGet? {
        var reader = Reader(bytes: line)
        return reader.sessionGet()
    }

    /// `sessionGet` over any bytes (tests, and callers without contiguous storage).
    public static func sessionGet(_ line: some Collection<UInt8>) -> SessionGet? {
        if let found = line.withContiguousStorageIfAvailable({ sessionGet(UnsafeRawBufferPointer($0)) }) { return found }
        return Array(line).withUnsafeBytes { sessionGet($0) }
    }

    /// The longest integer id read here; longer ones (up to any length) are the full decoder's.
    static let maxIdDigits = 18

    struct Reader {
        let bytes: UnsafeRawBufferPointer
        var index = 0

        init(bytes: UnsafeRawBufferPointer) {
            self.bytes = bytes
        }

        mutating func sessionGet() -> SessionGet? {
            skipSpace()
            guard take(UInt8(ascii: "{")) else { return nil }
            var sawVersion = false, sawMethod = false
            var id: RPCID?
            var context: String?
            repeat {
                skipSpace()
                guard let key = plainString() else { return nil }
                skipSpace()
                guard take(UInt8(ascii: ":")) else { return nil }
                skipSpace()
                switch key {
                case "jsonrpc":
                    guard !sawVersion, plainString() == "2.0" else { return nil }
                    sawVersion = true
                case "method":
                    guard !sawMethod, plainString() == RPCMethod.sessionGet.rawValue else { return nil }
                    sawMethod = true
                case "id":
                    guard id == nil, let value = idValue() else { return nil }
                    id = value
                case "params":
                    guard context == nil, let value = params() else { return nil }
                    context = value
                default:
                    return nil
                }
                skipSpace()
            } while take(UInt8(ascii: ","))
            guard take(UInt8(ascii: "}")) else { return nil }
            skipSpace()
            guard index == bytes.count, sawVersion, sawMethod, let id, let context else { return nil }
            return SessionGet(id: id, context: context)
        }

        /// `{"context": "NAME"}` and nothing else: NAME.
        mutating func params() -> String? {
            guard take(UInt8(ascii: "{")) else { return nil }
            skipSpace()
            guard plainString() == "context" else { return nil }
            skipSpace()
            guard take(UInt8(ascii: ":")) else { return nil }
            skipSpace()
            guard let context = plainString() else { return nil }
            skipSpace()
            return take(UInt8(ascii: "}")) ? context : nil
        }

        /// An integer literal (JSON's: no leading zero, no plus; not `-0`, whose text the full decoder keeps
        /// differently), a plain string, or null.
        mutating func idValue() -> RPCID? {
            guard index < bytes.count else { return nil }
            switch bytes[index] {
            case UInt8(ascii: "\""):
                return plainString().map { .string($0) }
            case UInt8(ascii: "n"):
                guard bytes.count - index >= 4, bytes[index + 1] == UInt8(ascii: "u"), bytes[index + 2] == UInt8(ascii: "l"),
                      bytes[index + 3] == UInt8(ascii: "l") else { return nil }
                index += 4
                return .null
            default:
                let start = index
                _ = take(UInt8(ascii: "-"))
                let digitsStart = index
                while index < bytes.count, bytes[index] >= UInt8(ascii: "0"), bytes[index] <= UInt8(ascii: "9") { index += 1 }
                let digits = index - digitsStart
                guard digits > 0, digits <= maxIdDigits,
                      !(bytes[digitsStart] == UInt8(ascii: "0") && (digits > 1 || digitsStart > start)) else { return nil }
                // A fraction or an exponent follows: not an integer literal.
                if index < bytes.count {
                    switch bytes[index] {
                    case UInt8(ascii: "."), UInt8(ascii: "e"), UInt8(ascii: "E"): return nil
                    default: break
                    }
                }
                return .number(String(decoding: UnsafeRawBufferPointer(rebasing: bytes[start..<index]), as: UTF8.self))
            }
        }

        /// A string of printable ASCII without escapes: its text; else nil (the full decoder reads it).
        mutating func plainString() -> String? {
            guard take(UInt8(ascii: "\"")) else { return nil }
            let start = index
            while index < bytes.count {
                let byte = bytes[index]
                if byte == UInt8(ascii: "\"") {
                    let text = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[start..<index]), as: UTF8.self)
                    index += 1
                    return text
                }
                guard byte >= 0x20, byte < 0x7F, byte != UInt8(ascii: "\\") else { return nil }
                index += 1
            }
            return nil
        }

        mutating func take(_ byte: UInt8) -> Bool {
            guard index < bytes.count, bytes[index] == byte else { return false }
            index += 1
            return true
        }

        /// JSON's whitespace: space, tab, CR, LF.
        mutating func skipSpace() {
            while index < bytes.count {
                switch bytes[index] {
                case 0x20, 0x09, 0x0D, 0x0A: index += 1
                default: return
                }
            }
        }
    }
}
