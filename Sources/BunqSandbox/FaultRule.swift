import Foundation

/// Injected faults (`/_sandbox/faults`): for endpoints matching a pattern, with a probability and an optional
/// count, answer an error (bunq's envelope, or a raw body such as a proxy's HTML page), delay, drop the
/// connection, or sign the reply wrongly.
struct FaultRule: Sendable {
    enum Action: Sendable, Equatable {
        /// bunq's JSON error envelope.
        case status(Int, String)
        /// Exactly this body (possibly empty), with this `Content-Type` if any: what a load balancer in front of
        /// bunq answers. Never signed.
        case raw(status: Int, contentType: String?, body: String)
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

    /// Named failures seen in front of or from bunq, for `{"preset": NAME}`.
    static let presets: [String: Action] = [
        // What nginx in front of an upstream answers when the upstream is down.
        "html_502": .raw(status: 502, contentType: "text/html", body: """
            <html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n\
            <hr><center>nginx</center>\r\n</body>\r\n</html>\r\n
            """),
        "empty_503": .raw(status: 503, contentType: nil, body: ""),
        "user_error_490": .status(490, defaultMessage(490)),
        "maintenance_491": .status(491, defaultMessage(491)),
    ]

    /// Parses an admin request: `{"endpoint": "...", "status": 503, "error": "...", "delay_ms": 100, "drop": true,
    /// "bad_signature": true, "probability": 0.5, "count": 2}` (exactly one action). `"body"` (with an optional
    /// `"content_type"`) next to `status` answers that raw body instead of bunq's envelope; `"preset"` names one
    /// of `presets`.
    static func parse(_ json: [String: Any], id: Int) throws(SandboxError) -> FaultRule {
        guard let endpoint = json["endpoint"] as? String, !endpoint.isEmpty else {
            throw .badRequest("Field endpoint is required, e.g. \"POST /v1/session-server\" or \"*\".")
        }
        var actions: [Action] = []
        if let status = json["status"] as? Int {
            guard (400...599).contains(status) else { throw .badRequest("Field status must be 400 to 599.") }
            if let body = json["body"] as? String {
                actions.append(.raw(status: status, contentType: json["content_type"] as? String, body: body))
            } else {
                actions.append(.status(status, (json["error"] as? String) ?? Self.defaultMessage(status)))
            }
        } else if json["body"] != nil || json["content_type"] != nil {
            throw .badRequest("Fields body and content_type need a status.")
        }
        if let name = json["preset"] as? String {
            guard let preset = presets[name] else {
                throw .badRequest("Field preset must be one of " + presets.keys.sorted().joined(separator: ", ") + ".")
            }
            actions.append(preset)
        }
        if let delay = json["delay_ms"] as? Int {
            guard delay >= 0, delay <= 600_000 else { throw .badRequest("Field delay_ms must be 0 to 600000.") }
            actions.append(.delay(milliseconds: delay))
        }
        if json["drop"] as? Bool == true { actions.append(.drop) }
        if json["bad_signature"] as? Bool == true { actions.append(.badSignature) }
        guard actions.count == 1, let action = actions.first else {
            throw .badRequest("Give exactly one of status, preset, delay_ms, drop or bad_signature.")
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
        // DESCRIPTION.md's descriptions of 490 USER ERROR and 491 MAINTENANCE ERROR.
        case 490: "Most likely a parameter is missing or invalid."
        case 491: "bunq is in maintenance mode."
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
        case .raw(let status, let contentType, let body):
            members += [("status", .int(status)), ("body", .string(body))]
            if let contentType { members.append(("content_type", .string(contentType))) }
        case .delay(let milliseconds): members.append(("delay_ms", .int(milliseconds)))
        case .drop: members.append(("drop", true))
        case .badSignature: members.append(("bad_signature", true))
        }
        return .object(members)
    }
}
