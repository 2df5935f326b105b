/// Our side of bunq's rate limits: a sliding window per method and endpoint, shared by every identity, so the
/// daemon never earns a 429 it could have predicted. Callers wait for a slot instead of failing, so a start-up
/// burst is spread out rather than refused.
public actor BunqRateLimiter {
    public enum Mode: String, Sendable, CaseIterable {
        /// bunq's documented limits: GET 3, POST 5, PUT and DELETE 2 per 3 s; session-server 1 per 30 s.
        case bunq
        /// No limits, for a local emulator run with `--rate-limits off`.
        case unlimited
    }

    public struct Limit: Sendable, Equatable {
        public let calls: Int
        public let window: Duration

        public init(calls: Int, window: Duration) {
            self.calls = calls
            self.window = window
        }
    }

    public nonisolated let mode: Mode
    private let limits: @Sendable (_ method: String, _ endpoint: String) -> Limit?
    /// Reserved call times per endpoint key, oldest first, pruned as they leave the window.
    private var reservations: [String: [ContinuousClock.Instant]] = [:]

    public init(mode: Mode) {
        self.mode = mode
        self.limits = { method, endpoint in mode == .unlimited ? nil : Self.bunqLimit(method: method, endpoint: endpoint) }
    }

    /// A limiter with custom limits (tests).
    public init(limits: @escaping @Sendable (_ method: String, _ endpoint: String) -> Limit?) {
        self.mode = .bunq
        self.limits = limits
    }

    public static func bunqLimit(method: String, endpoint: String) -> Limit {
        if method == "POST", endpoint == "session-server" { return Limit(calls: 1, window: .seconds(30)) }
        switch method {
        case "GET": return Limit(calls: 3, window: .seconds(3))
        case "POST": return Limit(calls: 5, window: .seconds(3))
        default: return Limit(calls: 2, window: .seconds(3))
        }
    }

    /// The endpoint key of a path relative to the API base: numeric ids become `{id}` (`user/{id}/oauth-client`).
    public static func endpointKey(_ path: String) -> String {
        path.split(separator: "?").first.map { path in
            path.split(separator: "/").map { $0.allSatisfy(\.isNumber) ? "{id}" : String($0) }.joined(separator: "/")
        } ?? path
    }

    /// When the next call to `endpoint` may go out, reserving that slot; `now` when it may go at once.
    public func reserve(method: String, endpoint: String) -> ContinuousClock.Instant {
        let now = ContinuousClock.now
        guard let limit = limits(method, endpoint) else { return now }
        let key = "\(method) \(endpoint)"
        var slots = reservations[key, default: []]
        slots.removeAll { $0 + limit.window <= now }
        // Sorted slots: the new call fits once the `calls`-th latest reservation has left the window.
        let slot = slots.count < limit.calls ? now : max(now, slots[slots.count - limit.calls] + limit.window)
        slots.insert(slot, at: slots.firstIndex { $0 > slot } ?? slots.endIndex)
        reservations[key] = slots
        return slot
    }

    /// Waits until a call to `endpoint` fits bunq's limit. Throws only when the task is cancelled.
    public nonisolated func acquire(method: String, endpoint: String) async throws {
        let slot = await reserve(method: method, endpoint: endpoint)
        if slot > ContinuousClock.now {
            try await Task.sleep(until: slot, clock: .continuous)
        }
    }
}
