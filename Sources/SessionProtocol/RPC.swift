import DynamicJSON
import Foundation

/// The JSON-RPC 2.0 error codes of the socket protocol (DESIGN.md, "The socket protocol").
public enum RPCErrorCode: Int, Sendable, CaseIterable {
    case parseError = -32700
    /// Also an oversize line (> 64 KiB).
    case invalidRequest = -32600
    case methodNotFound = -32601
    case invalidParams = -32602
    case internalError = -32603
    /// An unknown context, or one the caller may not see: the same answer, so names cannot be probed.
    case unknownContext = 1001
    case permissionDenied = 1002
    /// No usable session right now: `data.state`, `data.retry_at`.
    case sessionUnavailable = 1003
    /// A human must act: `data.reason`.
    case needsAttention = 1004
    case upstreamFailure = 1005
    case invalidOAuthState = 1006
}

/// The methods of the socket protocol.
public enum RPCMethod: String, Sendable, CaseIterable {
    case sessionGet = "session.get"
    case requestSign = "request.sign"
    case sessionRenew = "session.renew"
    case sessionReportInvalid = "session.report_invalid"
    case sessionSubscribe = "session.subscribe"
    case contextList = "context.list"
    case contextStatus = "context.status"
    case contextRemove = "context.remove"
    case oauthAuthorizeURL = "oauth.authorize_url"
    case oauthComplete = "oauth.complete"
    case daemonStatus = "daemon.status"
}

/// A request id: a number, a string, or null (as JSON-RPC allows). A number is kept as the request wrote it, so
/// it comes back byte for byte (18446744073709551615 stays itself).
public enum RPCID: Sendable, Hashable, CustomStringConvertible {
    /// The number's JSON text, exactly as received.
    case number(String)
    case string(String)
    case null

    /// `.number` for an integer literal (`-?[0-9]+`), else nil.
    static func integerLiteral(_ text: [UInt8]) -> RPCID? {
        let digits = text.first == UInt8(ascii: "-") ? text.dropFirst() : text[...]
        guard !digits.isEmpty, digits.allSatisfy({ (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) }) else { return nil }
        return .number(String(decoding: text, as: UTF8.self))
    }

    public var json: String {
        switch self {
        case .number(let text): text
        case .string(let value): JSONText.quote(value)
        case .null: "null"
        }
    }

    public var description: String { json }
}

/// A parsed request line.
public struct RPCRequest: Sendable {
    public let id: RPCID?
    public let method: String
    public let params: [String: JSONValue]

    public init(id: RPCID?, method: String, params: [String: JSONValue]) {
        self.id = id
        self.method = method
        self.params = params
    }

    /// A string parameter, or nil.
    public func string(_ name: String) -> String? { params[name]?.string }

    /// A boolean parameter (`true` or `false`, not a number), or nil.
    public func bool(_ name: String) -> Bool? { params[name]?.bool }

    /// An integer parameter (not a boolean, not a fraction), or nil.
    public func integer(_ name: String) -> Int? { params[name]?.integer }
}

/// Why a line is not a request: the error to answer with (`id` when it could be read).
public struct RPCLineError: Error, Sendable {
    public let id: RPCID
    public let code: RPCErrorCode
    public let message: String
}

public enum RPCCodec {
    /// The longest line accepted (the newline excluded).
    public static let maxLineBytes = 64 * 1024

    /// Parses one line into a request, or the error to answer.
    public static func parse(_ line: some Collection<UInt8>) -> Result<RPCRequest, RPCLineError> {
        let data = Data(line)
        guard let value = JSONValue(parsing: data) else {
            return .failure(RPCLineError(id: .null, code: .parseError, message: "Parse error: the line is not valid JSON (UTF-8)"))
        }
        guard case .object(let request) = value else {
            let message = value.array != nil ? "Invalid Request: batches are not supported" : "Invalid Request: not an object"
            return .failure(RPCLineError(id: .null, code: .invalidRequest, message: message))
        }
        let id: RPCID?
        switch request["id"] {
        case nil: id = nil
        case .null?: id = .null
        case .string(let text)?: id = .string(text)
        // An integer other than 0 prints exactly as JSON wrote it (JSON has no leading zeros or plus signs).
        case .integer(let number)? where number != 0: id = .number(String(number))
        // Any other number is judged by its text, not by the type the parser chose for it (which varies at the
        // edges of 64 bits): an integer literal is an id, kept byte for byte (0, which may have been -0; values
        // beyond Int64); a fraction or an exponent is not.
        case .integer?, .double?: id = RawJSONMember.value(of: "id", in: data).flatMap(RPCID.integerLiteral)
        case .bool?, .array?, .object?: id = nil
        }
        if request["id"] != nil, id == nil {
            return .failure(RPCLineError(id: .null, code: .invalidRequest, message: "Invalid Request: id must be a string, an integer or null"))
        }
        guard request["jsonrpc"]?.string == "2.0" else {
            return .failure(RPCLineError(id: id ?? .null, code: .invalidRequest, message: "Invalid Request: jsonrpc must be \"2.0\""))
        }
        guard let method = request["method"]?.string else {
            return .failure(RPCLineError(id: id ?? .null, code: .invalidRequest, message: "Invalid Request: method must be a string"))
        }
        let params: [String: JSONValue]
        switch request["params"] {
        case nil, .null?: params = [:]
        case .object(let members)?: params = members
        default:
            return .failure(RPCLineError(id: id ?? .null, code: .invalidParams, message: "Invalid params: params must be an object"))
        }
        return .success(RPCRequest(id: id, method: method, params: params))
    }

    /// `{"jsonrpc":"2.0","id":…,"result":…}\n`; `resultJSON` is already serialized.
    public static func result(id: RPCID, _ resultJSON: String) -> [UInt8] {
        Array("{\"jsonrpc\":\"2.0\",\"id\":\(id.json),\"result\":\(resultJSON)}\n".utf8)
    }

    /// `result(id:_:)` with the result's JSON as bytes.
    public static func result(id: RPCID, _ resultJSON: [UInt8]) -> [UInt8] {
        var line = resultPrefix
        line += id.json.utf8
        line += resultInfix
        line += resultJSON
        line += resultSuffix
        return line
    }

    /// The fixed parts of a result line, for writers that assemble it in place.
    public static let resultPrefix = Array(#"{"jsonrpc":"2.0","id":"#.utf8)
    public static let resultInfix = Array(#","result":"#.utf8)
    public static let resultSuffix = Array("}\n".utf8)

    /// `{"jsonrpc":"2.0","id":…,"error":{"code":…,"message":…,"data":…}}\n`.
    public static func error(id: RPCID, _ code: RPCErrorCode, _ message: String, data: [String: String]? = nil) -> [UInt8] {
        var text = "{\"jsonrpc\":\"2.0\",\"id\":\(id.json),\"error\":{\"code\":\(code.rawValue),\"message\":\(JSONText.quote(message))"
        if let data { text += ",\"data\":" + RPCJSON.encode(data) }
        return Array((text + "}}\n").utf8)
    }

    /// A server notification: `{"jsonrpc":"2.0","method":…,"params":…}\n`.
    public static func notification(_ method: String, _ params: some Encodable) -> [UInt8] {
        Array("{\"jsonrpc\":\"2.0\",\"method\":\(JSONText.quote(method)),\"params\":\(RPCJSON.encode(params))}\n".utf8)
    }
}

/// JSON text helpers: quoting on the hot path, the protocol's timestamps.
public enum JSONText {
    /// A JSON string literal for `value`.
    public static func quote(_ value: String) -> String {
        var out = "\""
        out.reserveCapacity(value.utf8.count + 2)
        for scalar in value.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case let c where c.value < 0x20: out += String(format: "\\u%04x", c.value)
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }

    /// RFC 3339 UTC with milliseconds, as every timestamp of the protocol.
    public static func timestamp(_ date: Date) -> String {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return formatter.string(from: date)
    }

    /// A protocol timestamp read back (RFC 3339 with milliseconds); nil for any other text.
    public static func date(_ text: String) -> Date? {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return formatter.date(from: text)
    }
}
