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
