import Foundation

/// bunq's rate limits per client IP, method and endpoint: GET 3, POST 5, PUT and DELETE 2 calls per 3 s;
/// session-server 1 per 30 s.
struct SandboxRateLimiter: Sendable {
    private var calls: [String: [Date]] = [:]
    /// Multiplies every window (`--rate-limit-scale`).
    var scale: Double = 1

    static func limit(method: String, endpoint: String) -> (calls: Int, seconds: Int) {
        if endpoint == "POST /v1/session-server" { return (1, 30) }
        switch method {
        case "GET": return (3, 3)
        case "POST": return (5, 3)
        default: return (2, 3)
        }
    }

    /// Records the call and returns nil, or returns bunq's 429 message when the window is full.
    mutating func admit(ip: String, method: String, endpoint: String, now: Date) -> String? {
        let (limit, seconds) = Self.limit(method: method, endpoint: endpoint)
        let key = "\(ip) \(endpoint)"
        let windowSeconds = TimeInterval(seconds) * scale
        var window = (calls[key] ?? []).filter { now.timeIntervalSince($0) < windowSeconds }
        guard window.count < limit else {
            calls[key] = window
            return "Too many requests. You can do a maximum of \(limit) calls per \(seconds) second to this endpoint."
        }
        window.append(now)
        calls[key] = window
        if calls.count > 10_000 { calls = calls.filter { !$0.value.isEmpty } }
        return nil
    }
}

/// Injected faults (`/_sandbox/faults`): for endpoints matching a pattern, with a probability and an optional
/// count, answer an error, delay, drop the connection, or sign the reply wrongly.
struct FaultRule: Sendable {
    enum Action: Sendable, Equatable {
        case status(Int, String)
        case delay(milliseconds: Int)
        case drop
        case badSignature
    }

    let id: Int
    /// `METHOD /v1/path` with `*` matching any run of characters, compared with route names such as
    /// `POST /v1/session-server` or `GET /v1/user/{userID}`.
    let endpoint: String
    let probability: Double
    var remaining: Int?
    let action: Action

    func matches(_ name: String) -> Bool {
        Self.glob(Array(endpoint.utf8)[...], Array(name.utf8)[...])
    }

    private static func glob(_ pattern: ArraySlice<UInt8>, _ text: ArraySlice<UInt8>) -> Bool {
        guard let first = pattern.first else { return text.isEmpty }
        if first == UInt8(ascii: "*") {
            let rest = pattern.dropFirst()
            var suffix = text[...]
            while true {
                if glob(rest, suffix) { return true }
                if suffix.isEmpty { return false }
                suffix = suffix.dropFirst()
            }
        }
        guard let head = text.first, head == first else { return false }
        return glob(pattern.dropFirst(), text.dropFirst())
    }

    /// Parses an admin request: `{"endpoint": "...", "status": 503, "error": "...", "delay_ms": 100, "drop": true,
    /// "bad_signature": true, "probability": 0.5, "count": 2}` (exactly one action).
    static func parse(_ json: [String: Any], id: Int) throws(SandboxError) -> FaultRule {
        guard let endpoint = json["endpoint"] as? String, !endpoint.isEmpty else {
            throw .badRequest("Field endpoint is required, e.g. \"POST /v1/session-server\" or \"*\".")
        }
        var actions: [Action] = []
        if let status = json["status"] as? Int {
            guard (400...599).contains(status) else { throw .badRequest("Field status must be 400 to 599.") }
            actions.append(.status(status, (json["error"] as? String) ?? Self.defaultMessage(status)))
        }
        if let delay = json["delay_ms"] as? Int {
            guard delay >= 0, delay <= 600_000 else { throw .badRequest("Field delay_ms must be 0 to 600000.") }
            actions.append(.delay(milliseconds: delay))
        }
        if json["drop"] as? Bool == true { actions.append(.drop) }
        if json["bad_signature"] as? Bool == true { actions.append(.badSignature) }
        guard actions.count == 1, let action = actions.first else {
            throw .badRequest("Give exactly one of status, delay_ms, drop or bad_signature.")
        }
        let probability = (json["probability"] as? Double) ?? 1
        guard (0...1).contains(probability) else { throw .badRequest("Field probability must be 0 to 1.") }
        let count = json["count"] as? Int
        if let count, count < 1 { throw .badRequest("Field count must be at least 1.") }
        return FaultRule(id: id, endpoint: endpoint, probability: probability, remaining: count, action: action)
    }

    static func defaultMessage(_ status: Int) -> String {
        switch status {
        case 429: "Too many requests. You can do a maximum of 1 calls per 30 second to this endpoint."
        case 491: "Service under maintenance. Please try again later."
        case 401: "Insufficient authentication."
        case 403: "Insufficient authorisation."
        case 500...: "Something went wrong on our end. Please try again later."
        default: "Injected error."
        }
    }

    var json: BunqJSON {
        var members: [(String, BunqJSON)] = [("id", .int(id)), ("endpoint", .string(endpoint)),
                                             ("probability", .double(probability))]
        if let remaining { members.append(("count", .int(remaining))) }
        switch action {
        case .status(let status, let message): members += [("status", .int(status)), ("error", .string(message))]
        case .delay(let milliseconds): members.append(("delay_ms", .int(milliseconds)))
        case .drop: members.append(("drop", true))
        case .badSignature: members.append(("bad_signature", true))
        }
        return .object(members)
    }
}
