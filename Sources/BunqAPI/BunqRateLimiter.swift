import Timekeeping

/// Our side of bunq's rate limits: a sliding window per method and endpoint, shared by every identity, so the
/// daemon never earns a 429 it could have predicted. Callers wait for a slot instead of failing, so a start-up
/// burst is spread out rather than refused.
///
/// bunq counts a call when it arrives; we can only know when it left and when its answer came. So a call counts
/// from when it actually leaves (`depart`: its planned slot may have passed long before a loaded machine ran it),
/// and once answered from its answer (`settle`: the latest moment bunq can have counted it); each window is kept
/// a little stricter than bunq's (`margin`) for the time between leaving and arriving. A call planned behind
/// others checks again when it is about to leave, against the calls before it as they actually went, and waits
/// longer if they went late. A 429 that arrives anyway (another process on the same IP spent the budget) pushes
/// that endpoint's window back by a whole window.
///
/// The session-server budget (1 per 30 s per IP) is the scarce resource. A caller that grants it itself, in order
/// of urgency (the keeper's scheduler), builds this limiter with `exempt: [sessionServer]`, so a session-server
/// call is never charged twice.
///
/// Windows are kept on `clock`, which the forwarder's deadlines and waits share (tests advance a manual clock).
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

    /// The method and endpoint key of the session-server call.
    public static let sessionServer = (method: "POST", endpoint: "session-server")

    public nonisolated let mode: Mode
    /// Multiplies every window (testing: 0.1 gives session-server 1 per 3 s, against `bunq-sandbox --rate-limit-scale 0.1`).
    public nonisolated let scale: Double
    /// What the windows are measured on and the waits sleep on.
    public nonisolated let clock: AnyClock
    private let limits: @Sendable (_ method: String, _ endpoint: String) -> Limit?
    /// Per endpoint key, the calls counted in its window, by when each counts from (planned, left or answered),
    /// oldest first; pruned as they leave the window.
    private var reservations: [String: [Slot]] = [:]
    private var lastSlotId: UInt64 = 0
    /// Per endpoint key: no call before this instant (set by a 429).
    private var blockedUntil: [String: AnyClock.Instant] = [:]
    /// 429s seen per endpoint key, for status and tests.
    public private(set) var rateLimitedCount: [String: Int] = [:]

    /// bunq's limits (or none), windows multiplied by `scale`; `exempt` lists `(method, endpoint)` pairs another
    /// component limits (they pass through here unlimited).
    public init(mode: Mode, scale: Double = 1, exempt: [(method: String, endpoint: String)] = [],
                clock: AnyClock = .continuous) {
        self.mode = mode
        self.scale = scale
        self.clock = clock
        let exemptKeys = Set(exempt.map { "\($0.method) \($0.endpoint)" })
        self.limits = { method, endpoint in
            guard mode == .bunq, !exemptKeys.contains("\(method) \(endpoint)") else { return nil }
            let limit = Self.bunqLimit(method: method, endpoint: endpoint)
            return Limit(calls: limit.calls, window: limit.window * scale)
        }
    }

    /// A limiter with custom limits (tests).
    public init(clock: AnyClock = .continuous, limits: @escaping @Sendable (_ method: String, _ endpoint: String) -> Limit?) {
        self.mode = .bunq
        self.scale = 1
        self.clock = clock
        self.limits = limits
    }

    public static func bunqLimit(method: String, endpoint: String) -> Limit {
        if method == sessionServer.method, endpoint == sessionServer.endpoint { return Limit(calls: 1, window: .seconds(30)) }
        switch method {
        case "GET": return Limit(calls: 3, window: .seconds(3))
        case "POST": return Limit(calls: 5, window: .seconds(3))
        default: return Limit(calls: 2, window: .seconds(3))
        }
    }

    /// How much stricter than bunq's our window is: bunq counts arrivals, we count departures, and a call that
    /// left first may arrive later than the one after it. 5% of the window, at least 50 ms.
    public static func margin(for window: Duration) -> Duration {
        max(window * 0.05, .milliseconds(50))
    }

    /// The endpoint key of a path relative to the API base: numeric ids become `{id}` (`user/{id}/oauth-client`).
    public static func endpointKey(_ path: String) -> String {
        path.split(separator: "?").first.map { path in
            path.split(separator: "/").map { $0.allSatisfy(\.isNumber) ? "{id}" : String($0) }.joined(separator: "/")
        } ?? path
    }

    /// A call's place in its endpoint's window: `at` is when it may leave (planned), then when it counts from.
    public struct Slot: Sendable, Equatable {
        /// The endpoint key (`METHOD endpoint`).
        let key: String
        /// The endpoint's window; nil for a call no window limits.
        let limit: Limit?
        let id: UInt64
        public let at: AnyClock.Instant
        /// False for a call no window limits: it neither departs nor settles (no hop to the limiter).
        var limited: Bool { limit != nil }

        func moved(to at: AnyClock.Instant) -> Slot { Slot(key: key, limit: limit, id: id, at: at) }
    }

    /// What `depart` decided.
    public enum Departure: Sendable, Equatable {
        /// Leave now: the call counts from now.
        case go
        /// The calls before it left late: wait until the new slot's `at`, then `depart` again.
        case wait(Slot)
        /// Its new slot would come after the caller's `notAfter`: nothing is reserved any more.
        case tooLate(next: AnyClock.Instant)
    }

    /// The next call to `endpoint`'s slot, reserved; its `at` is `now` when it may go at once.
    public func reserve(method: String, endpoint: String) -> Slot {
        reserve(method: method, endpoint: endpoint, notAfter: nil) ?? Slot(key: "", limit: nil, id: 0, at: clock.now)
    }

    /// `reserve`, but only a slot no later than `notAfter`: nil (nothing reserved) when the next one comes later.
    /// The proxy's requests take their slots here, from the same windows as the daemon's own calls.
    public func reserve(method: String, endpoint: String, notAfter: AnyClock.Instant?) -> Slot? {
        let now = clock.now
        let key = "\(method) \(endpoint)"
        guard let limit = limits(method, endpoint) else { return Slot(key: key, limit: nil, id: 0, at: now) }
        let at = nextSlot(key: key, limit: limit, now: now)
        if let notAfter, at > notAfter { return nil }
        lastSlotId &+= 1
        let slot = Slot(key: key, limit: limit, id: lastSlotId, at: at)
        insert(slot)
        return slot
    }

    /// The call holding `slot` is about to leave (its planned time has come). It goes if the calls before it, as
    /// they actually left (or were answered), leave room in the window now; otherwise it gets a later slot (or,
    /// past `notAfter`, none: nothing stays reserved).
    public func depart(_ slot: Slot, notAfter: AnyClock.Instant? = nil) -> Departure {
        guard let limit = slot.limit else { return .go }
        let now = clock.now
        var slots = reservations[slot.key, default: []]
        slots.removeAll { $0.id == slot.id }
        reservations[slot.key] = slots
        // Only the calls counted up to now: those planned later check against this one when their time comes.
        let earliest = earliest(key: slot.key, limit: limit, now: now, after: slots.filter { $0.at <= now })
        if let notAfter, earliest > notAfter { return .tooLate(next: earliest) }
        let moved = slot.moved(to: earliest)
        insert(moved)
        return earliest <= now ? .go : .wait(moved)
    }

    /// The call holding `slot` has its answer (or failed in transport): it counts from now, the latest moment
    /// bunq can have counted it.
    public nonisolated func settle(_ slot: Slot) async {
        guard slot.limited else { return }
        await settleNow(slot)
    }

    private func settleNow(_ slot: Slot) {
        guard var slots = reservations[slot.key], let index = slots.firstIndex(where: { $0.id == slot.id }) else { return }
        let now = clock.now
        guard slots[index].at < now else { return }
        slots.remove(at: index)
        reservations[slot.key] = slots
        insert(slot.moved(to: now))
    }

    private func insert(_ slot: Slot) {
        var slots = reservations[slot.key, default: []]
        slots.insert(slot, at: slots.firstIndex { $0.at > slot.at } ?? slots.endIndex)
        reservations[slot.key] = slots
    }

    /// When a call to `endpoint` could go out next, reserving nothing.
    public func nextSlot(method: String, endpoint: String) -> AnyClock.Instant {
        let now = clock.now
        guard let limit = limits(method, endpoint) else { return now }
        return nextSlot(key: "\(method) \(endpoint)", limit: limit, now: now)
    }

    /// The earliest slot for `key` (pruning reservations that left the window).
    private func nextSlot(key: String, limit: Limit, now: AnyClock.Instant) -> AnyClock.Instant {
        let window = limit.window + Self.margin(for: limit.window)
        var slots = reservations[key, default: []]
        slots.removeAll { $0.at + window <= now }
        reservations[key] = slots
        return earliest(key: key, limit: limit, now: now, after: slots)
    }

    /// When one more call to `key` fits after `slots` (sorted): once the `calls`-th latest of them has left the
    /// window (ours: bunq's plus the margin), and not before a 429's block ends.
    private func earliest(key: String, limit: Limit, now: AnyClock.Instant, after slots: [Slot]) -> AnyClock.Instant {
        let window = limit.window + Self.margin(for: limit.window)
        let earliest = max(now, blockedUntil[key] ?? now)
        return slots.count < limit.calls ? earliest : max(earliest, slots[slots.count - limit.calls].at + window)
    }

    /// bunq answered 429 to `endpoint`: someone else on this IP is spending its budget. No call to it for a
    /// whole window from now.
    public func rateLimited(method: String, endpoint: String) {
        let key = "\(method) \(endpoint)"
        rateLimitedCount[key, default: 0] += 1
        let window = limits(method, endpoint)?.window ?? Self.bunqLimit(method: method, endpoint: endpoint).window * scale
        let until = clock.now + window + Self.margin(for: window)
        blockedUntil[key] = max(blockedUntil[key] ?? until, until)
    }

    /// Waits until a call to `endpoint` fits bunq's limit and returns its slot, for `settle` once answered.
    /// Throws only when the task is cancelled.
    public nonisolated func acquire(method: String, endpoint: String) async throws -> Slot {
        var slot = await reserve(method: method, endpoint: endpoint)
        guard slot.limited else { return slot }
        while true {
            if slot.at > clock.now { try await clock.sleep(until: slot.at) }
            switch await depart(slot) {
            case .go: return slot
            case .wait(let later): slot = later
            case .tooLate: return slot  // no notAfter: never
            }
        }
    }
}
